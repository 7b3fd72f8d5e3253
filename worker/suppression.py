"""Who must not be mailed: the send-time opt-out check.

`lookup` runs one query for a whole chunk of recipients; `decide` is the pure rule. Every
message carries its client's name and sender, so every message is checked against that
client's opt-out list (and no other client's), whatever `kind` its launch named; marketing
mail also against the firm's marketing list; all against the global bounce list; a
reminder also against the completion of the survey it follows up. `count_contacts` applies
CONTACT_CAP to the first invitations of a survey chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from worker.db import DB_ERRORS, Conn
from worker.errors import SuppressionUnavailable
from worker.states import Kind

# The order reasons are reported in when several apply.
REASONS = ("client_opt_out", "marketing_opt_out", "bounced", "completed", "contact_cap")


@dataclass(frozen=True)
class Scope:
    """Which opt-out list applies: a client's survey list, or the marketing list."""

    kind: Kind
    client_id: str


def decide(email_hash: bytes, hits: Mapping[bytes, frozenset[str]]) -> str | None:
    """The suppression reason for one recipient, or None if they may be mailed."""
    reasons = hits.get(email_hash)
    if not reasons:
        return None
    return next(r for r in REASONS if r in reasons)


async def lookup(
    conn: Conn,
    scope: Scope,
    hashes: Iterable[bytes],
    *,
    timeout: float,
    followed_up: Iterable[int] = (),
) -> dict[bytes, frozenset[str]]:
    """The suppression reasons that apply to each of `hashes` (absent: none apply).

    `followed_up` are the first invitations the chunk's reminders follow up: a completed
    one suppresses its reminder (`completed`). Raises SuppressionUnavailable when the check
    cannot run: the caller sends nothing.
    """
    try:
        rows = await conn.fetch(
            """SELECT email_hash, 'client_opt_out' AS reason FROM client_opt_outs
               WHERE client_id = $2 AND email_hash = ANY($3)
               UNION ALL
               SELECT email_hash, 'marketing_opt_out' FROM marketing_opt_outs
               WHERE $1 = 'marketing' AND email_hash = ANY($3)
               UNION ALL
               SELECT email_hash, 'bounced' FROM bounces WHERE email_hash = ANY($3)
               UNION ALL
               SELECT email_hash, 'completed' FROM invitations
               WHERE id = ANY($4) AND completed_at IS NOT NULL""",
            scope.kind,
            scope.client_id,
            list(hashes),
            list(followed_up),
            timeout=timeout,
        )
    except (TimeoutError, *DB_ERRORS) as e:
        raise SuppressionUnavailable(f"opt-out check failed: {type(e).__name__}") from e
    found: dict[bytes, set[str]] = {}
    for row in rows:
        found.setdefault(row["email_hash"], set()).add(row["reason"])
    return {h: frozenset(r) for h, r in found.items()}


async def count_contacts(
    conn: Conn,
    invitations: Mapping[int, bytes],
    *,
    cap: int,
    window: timedelta,
    timeout: float,
) -> set[int]:
    """Count first survey invitations against CONTACT_CAP; the ids over the cap.

    `invitations` maps each invitation about to be started to its address's hash. Each
    one within the cap is counted now (once: a retry of a deferred one is not counted
    again), in the caller's transaction. The address's row stays locked until that commits,
    so concurrent workers and campaigns never count past the cap; rows are taken in the
    order of their hashes, so two chunks never deadlock. Raises
    SuppressionUnavailable when the count cannot run: the caller sends nothing.
    """
    if not invitations:
        return set()
    try:
        # A chunk is one campaign's first messages: each address appears once in it.
        rows = await conn.fetch(
            """WITH chunk AS (
                   SELECT * FROM unnest($1::bigint[], $2::bytea[]) AS g(invitation_id, email_hash)),
               counted AS (
                   INSERT INTO contact_counts AS c (email_hash, invitation_ids, counted_at)
                   SELECT email_hash, ARRAY[invitation_id], ARRAY[now()] FROM chunk
                   ORDER BY email_hash
                   ON CONFLICT (email_hash) DO UPDATE
                   SET invitation_ids = c.invitation_ids || EXCLUDED.invitation_ids,
                       counted_at = c.counted_at || EXCLUDED.counted_at
                   WHERE NOT EXCLUDED.invitation_ids[1] = ANY(c.invitation_ids)
                     AND (SELECT count(*) FROM unnest(c.counted_at) AS t(at)
                          WHERE at > now() - $3::interval) < $4
                   RETURNING c.email_hash)
               -- Neither counted now nor before (a retry): over the cap.
               SELECT g.invitation_id FROM chunk g
               WHERE NOT EXISTS (SELECT 1 FROM counted WHERE counted.email_hash = g.email_hash)
                 AND NOT EXISTS (SELECT 1 FROM contact_counts c
                                 WHERE c.email_hash = g.email_hash
                                   AND g.invitation_id = ANY(c.invitation_ids))""",
            list(invitations),
            list(invitations.values()),
            window,
            cap,
            timeout=timeout,
        )
    except (TimeoutError, *DB_ERRORS) as e:
        raise SuppressionUnavailable(f"contact count failed: {type(e).__name__}") from e
    return {r["invitation_id"] for r in rows}


async def purge_counts(conn: Conn, days: int) -> int:
    """Drop the contact-cap counts older than `days`; how many were dropped.

    The rows are locked in the order of their hashes, as counting does, so a purge and a
    count never deadlock.
    """
    dropped: int = await conn.fetchval(
        """WITH old AS (
               SELECT email_hash, cardinality(counted_at) AS before FROM contact_counts
               WHERE counted_at[1] < now() - make_interval(days => $1)
               ORDER BY email_hash FOR UPDATE),
           gone AS (
               DELETE FROM contact_counts c USING old
               WHERE c.email_hash = old.email_hash
                 AND c.counted_at[cardinality(c.counted_at)] < now() - make_interval(days => $1)
               RETURNING old.before AS n),
           kept AS (
               UPDATE contact_counts c SET (invitation_ids, counted_at) = (
                   SELECT array_agg(i ORDER BY n), array_agg(t ORDER BY n)
                   FROM unnest(c.invitation_ids, c.counted_at) WITH ORDINALITY AS u(i, t, n)
                   WHERE t >= now() - make_interval(days => $1))
               FROM old
               WHERE c.email_hash = old.email_hash
                 AND c.counted_at[cardinality(c.counted_at)] >= now() - make_interval(days => $1)
               RETURNING old.before - cardinality(c.counted_at) AS n)
           SELECT coalesce((SELECT sum(n) FROM gone), 0)
                  + coalesce((SELECT sum(n) FROM kept), 0)""",
        days,
    )
    return dropped
