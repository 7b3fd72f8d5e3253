"""The ledger: campaigns and invitations in Postgres, the source of truth.

Every state change is a conditional update (`WHERE state = ...`), so a job that runs twice,
or two workers racing for the same rows, can never move an invitation twice.

Invitation states:
  pending    waiting; a worker claims it by locking the row (FOR UPDATE SKIP LOCKED)
  sending    its chunk is on the way (the send journal says how far each message got);
             when `lease_until` passes first, `reconcile` settles it from the journal
  sent       the server accepted it (2xx)                                         final
  suppressed an opt-out list or the bounce list forbids it (`reason` says which)  final
  deferred   4xx or connection error; retried at `next_attempt_at`
  failed     5xx, bad address, too many attempts (`reason`)                       final
  unknown    the reply to DATA never came: it may have been delivered             final
  cancelled  the campaign was cancelled before it was sent                        final
  expired    the campaign closed (--close-at) before it was sent                  final
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from worker.db import Conn, row_count
from worker.records import (
    Campaign,
    CampaignSummary,
    Completed,
    Expired,
    Invitation,
    Outcome,
    Round,
)
from worker.states import ENDED_STATUSES, CampaignStatus


async def load_campaign(conn: Conn, campaign_id: int) -> Campaign | None:
    """The campaign and its client, or None if there is no such campaign."""
    row = await conn.fetchrow(
        """SELECT c.id, c.client_id, k.token_id AS client_token_id, k.name AS client_name,
                  k.sender_email, c.name, c.kind, c.template, c.locale, c.survey_url, c.status,
                  k.relays, k.timezone, c.send_window, c.per_day, c.start_at, c.close_at,
                  c.waiting_until
           FROM campaigns c JOIN clients k ON k.id = c.client_id
           WHERE c.id = $1""",
        campaign_id,
    )
    return Campaign(**dict(row)) if row else None


async def create_campaign(
    conn: Conn,
    *,
    client_id: str,
    name: str,
    kind: str,
    template: str,
    locale: str,
    survey_url: str,
    idempotency_key: str | None,
    reminders: int,
    reminder_interval: timedelta | None,
    start_at: datetime | None = None,
    close_at: datetime | None = None,
    send_window: str | None = None,
    per_day: int | None = None,
) -> int | None:
    """Insert a campaign, running, or `scheduled` when `start_at` is still ahead; its id,
    or None when the client already used `idempotency_key` (the insert waits for a
    concurrent launch with the same key)."""
    campaign_id: int | None = await conn.fetchval(
        """INSERT INTO campaigns (client_id, name, kind, template, locale, survey_url,
                                 idempotency_key, reminders, reminder_interval, status,
                                 start_at, close_at, send_window, per_day)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                   CASE WHEN $10::timestamptz > now() THEN 'scheduled' ELSE 'running' END,
                   $10, $11, $12, $13)
           ON CONFLICT (client_id, idempotency_key) DO NOTHING RETURNING id""",
        client_id,
        name,
        kind,
        template,
        locale,
        survey_url,
        idempotency_key,
        reminders,
        reminder_interval,
        start_at,
        close_at,
        send_window,
        per_day,
    )
    return campaign_id


async def import_invitations(
    conn: Conn,
    campaign_id: int,
    rows: AsyncIterable[tuple[int, str, bytes, str | None, str | None, str]],
) -> tuple[int, list[int]]:
    """Import `(line, email, email_hash, locale, timezone, vars as JSON text)` rows as the
    campaign's
    first invitations, streamed with COPY; how many were imported, and the lines of
    addresses seen before in the file (imported once, from their first line).

    Call inside the transaction that created the campaign: the staging table goes with it.
    """
    await conn.execute(
        """CREATE TEMP TABLE staging (line integer, email text, email_hash bytea,
                                      locale text, timezone text, vars text) ON COMMIT DROP"""
    )
    await conn.copy_records_to_table(
        "staging",
        records=rows,
        columns=["line", "email", "email_hash", "locale", "timezone", "vars"],
    )
    imported: int = await conn.fetchval(
        """WITH firsts AS (
               SELECT DISTINCT ON (email_hash) line, email, email_hash, locale, timezone, vars
               FROM staging ORDER BY email_hash, line),
           ins AS (
               INSERT INTO invitations (campaign_id, email, email_hash, locale, timezone, vars)
               SELECT $1, email, email_hash, locale, timezone, vars::jsonb
               FROM firsts ORDER BY line
               RETURNING 1)
           SELECT count(*) FROM ins""",
        campaign_id,
    )
    duplicates = await conn.fetch(
        """SELECT line FROM (
               SELECT line, row_number() OVER (PARTITION BY email_hash ORDER BY line) AS n
               FROM staging) s
           WHERE n > 1 ORDER BY line"""
    )
    return imported, [r["line"] for r in duplicates]


async def set_request_digest(conn: Conn, campaign_id: int, digest: bytes) -> None:
    """Store what the launch asked for, so that a retry with its key can be compared."""
    await conn.execute(
        "UPDATE campaigns SET request_digest = $2 WHERE id = $1", campaign_id, digest
    )


async def dispatch(
    conn: Conn, campaign_id: int, *, slice_size: int, slices: int, restart: bool
) -> list[tuple[int, int]]:
    """The next `slices` id ranges `[first, last]` of at most `slice_size` open invitations
    each, past the campaign's dispatch cursor (from its start with `restart`).

    Moves the cursor past them, so the caller must enqueue them; the campaign row's lock
    makes concurrent callers take different ranges. A range enqueued twice (a restart while
    slices are in flight) is harmless: claims decide who sends what. Returns nothing for a
    campaign that is not running.
    """
    async with conn.transaction():
        cursor = await conn.fetchval(
            """SELECT dispatched_through FROM campaigns
               WHERE id = $1 AND status = 'running' FOR UPDATE""",
            campaign_id,
        )
        if cursor is None:
            return []
        rows = await conn.fetch(
            """SELECT min(id) AS first, max(id) AS last FROM (
                   SELECT id, (row_number() OVER (ORDER BY id) - 1) / $3 AS bucket
                   FROM (SELECT id FROM invitations
                         WHERE campaign_id = $1 AND id > $2
                           AND state IN ('pending', 'deferred')
                         ORDER BY id LIMIT $3::bigint * $4::bigint) open) b
               GROUP BY bucket ORDER BY bucket""",
            campaign_id,
            0 if restart else cursor,
            slice_size,
            slices,
        )
        if rows:
            await conn.execute(
                "UPDATE campaigns SET dispatched_through = $2 WHERE id = $1",
                campaign_id,
                rows[-1]["last"],
            )
    return [(r["first"], r["last"]) for r in rows]


async def claim(
    conn: Conn,
    *,
    campaign_id: int,
    first_id: int,
    last_id: int,
    limit: int,
    zones: list[str] | None = None,
    client_zone: str = "UTC",
) -> list[Invitation]:
    """Lock up to `limit` due invitations of the range for this worker's transaction; with
    `zones`, only those of recipients in one of these time zones (a recipient without
    one is in `client_zone`).

    Call inside a transaction. `FOR UPDATE SKIP LOCKED` means no two workers ever hold the
    same invitation, and nothing is written: if the worker dies before `start_chunk`
    commits, its locks vanish with its connection and the rows are simply due again.
    """
    rows = await conn.fetch(
        """SELECT id, email, email_hash, locale, vars, attempts, round, parent_id,
                  first_attempt_at
           FROM invitations
           WHERE campaign_id = $1 AND id BETWEEN $2 AND $3
             AND (state = 'pending' OR (state = 'deferred' AND next_attempt_at <= now()))
             AND ($5::text[] IS NULL OR coalesce(timezone, $6) = ANY($5::text[]))
           ORDER BY id
           LIMIT $4
           FOR UPDATE SKIP LOCKED""",
        campaign_id,
        first_id,
        last_id,
        limit,
        zones,
        client_zone,
    )
    return [Invitation(**dict(r)) for r in rows]


async def start_chunk(
    conn: Conn,
    campaign_id: int,
    early: Sequence[Outcome],
    sending: Sequence[int],
    *,
    worker_id: str,
    lease_seconds: float,
) -> list[int] | None:
    """Record a chunk's suppressed and failed invitations and move the rest to `sending`.

    Runs in the transaction that `claim` locked the rows in, as its last statement; the
    caller commits it durably before any SMTP starts (a lost `sending` mark could turn
    into an uncounted duplicate). `sending` rows get a lease of `lease_seconds` from this
    statement's clock (not the transaction's start): if the worker dies before recording
    their outcome, `reconcile` settles them from the send journal when it runs out. Returns
    the ids now `sending`, or None when the campaign is no longer running (paused,
    cancelled or closed meanwhile): then nothing changed.
    """
    ids = [o.invitation_id for o in early] + list(sending)
    states = [o.state for o in early] + ["sending"] * len(sending)
    reasons = [o.reason for o in early] + [None] * len(sending)
    # The worker's sessions commit asynchronously; this transaction must not.
    await conn.execute("SET LOCAL synchronous_commit TO on")
    row = await conn.fetchrow(
        """WITH running AS (
               SELECT 1 FROM campaigns WHERE id = $1 AND status = 'running'
                 AND (close_at IS NULL OR clock_timestamp() < close_at)),
           upd AS (
               UPDATE invitations i
               SET state = v.state, reason = v.reason,
                   attempts = i.attempts + (v.state = 'sending')::int,
                   -- From this statement, not the claim's transaction: a chunk may wait
                   -- for its turn and for rate permits between the two.
                   lease_until = CASE WHEN v.state = 'sending'
                                      THEN clock_timestamp() + make_interval(secs => $6) END,
                   claimed_by = CASE WHEN v.state = 'sending' THEN $5 END,
                   updated_at = now()
               FROM unnest($2::bigint[], $3::text[], $4::text[]) AS v(id, state, reason)
               WHERE i.id = v.id AND i.state IN ('pending', 'deferred')
                 AND EXISTS (SELECT 1 FROM running)
               RETURNING i.id, i.state)
           SELECT EXISTS (SELECT 1 FROM running) AS running,
                  array(SELECT id FROM upd WHERE state = 'sending') AS sending""",
        campaign_id,
        ids,
        states,
        reasons,
        worker_id,
        lease_seconds,
    )
    assert row is not None
    return list(row["sending"]) if row["running"] else None


async def record(conn: Conn, outcomes: Sequence[Outcome], worker_id: str) -> None:
    """Record the SMTP outcomes of a chunk in one statement and drop the claims.

    Only rows still claimed by this worker and `sending` are touched, so a late or repeated
    write can never overwrite a final state. Hard bounces join the global bounce list and
    the campaign's feedback in the same statement, and the count of accepted first
    messages joins `recent_sends` (/ops's send-rate chart). If this write is lost (asynchronous
    commit, a crash), the rows stay `sending` and `reconcile` settles them from the send
    journal: never a silent duplicate.
    """
    if not outcomes:
        return
    await conn.execute(
        """WITH upd AS (
               UPDATE invitations i
               SET state = o.state, reason = o.reason, smtp_code = o.smtp_code,
                   message_id = COALESCE(o.message_id, i.message_id),
                   next_attempt_at = o.next_attempt_at,
                   attempts = i.attempts - (NOT o.started)::int,
                   first_attempt_at = CASE WHEN o.started
                                           THEN COALESCE(i.first_attempt_at, now())
                                           ELSE i.first_attempt_at END,
                   sent_at = CASE WHEN o.state = 'sent' THEN now() ELSE i.sent_at END,
                   lease_until = NULL, claimed_by = NULL, updated_at = now()
               FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::text[],
                           $6::timestamptz[], $8::bool[])
                    AS o(id, state, reason, smtp_code, message_id, next_attempt_at, started)
               WHERE i.id = o.id AND i.claimed_by = $7 AND i.state = 'sending'
               RETURNING i.id, i.campaign_id, i.email_hash, i.round, i.state, o.reason,
                         o.smtp_code),
           sends AS (
               INSERT INTO recent_sends (campaign_id, sent)
               SELECT campaign_id, count(*) FROM upd WHERE state = 'sent' AND round = 0
               GROUP BY campaign_id),
           hard AS (SELECT * FROM upd WHERE reason = 'hard_bounce'),
           feedback AS (
               INSERT INTO feedback (invitation_id, campaign_id, email_hash, kind, source)
               SELECT id, campaign_id, email_hash, 'hard', 'smtp' FROM hard
               ON CONFLICT DO NOTHING)
           INSERT INTO bounces (email_hash, kind, smtp_code)
           SELECT email_hash, 'hard', smtp_code FROM hard
           ON CONFLICT DO NOTHING""",
        [o.invitation_id for o in outcomes],
        [o.state for o in outcomes],
        [o.reason for o in outcomes],
        [o.smtp_code for o in outcomes],
        [o.message_id for o in outcomes],
        [o.next_attempt_at for o in outcomes],
        worker_id,
        [o.started for o in outcomes],
    )


async def next_retry_at(
    conn: Conn, campaign_id: int, first_id: int, last_id: int
) -> datetime | None:
    """When the earliest deferred invitation of the range is due, if any."""
    value: datetime | None = await conn.fetchval(
        """SELECT min(next_attempt_at) FROM invitations
           WHERE campaign_id = $1 AND id BETWEEN $2 AND $3 AND state = 'deferred'""",
        campaign_id,
        first_id,
        last_id,
    )
    return value


@dataclass(frozen=True)
class ZoneWork:
    """A time zone's open invitations in a slice: whether some are pending, and when the
    first deferred one is due (None: none deferred)."""

    zone: str
    pending: bool
    due: datetime | None


async def open_by_zone(
    conn: Conn, campaign_id: int, first_id: int, last_id: int, client_zone: str
) -> list[ZoneWork]:
    """The time zones of the range's open invitations (a recipient without one is in
    `client_zone`), with what waits in each: one row per zone, however many recipients."""
    rows = await conn.fetch(
        """SELECT coalesce(timezone, $4) AS zone, bool_or(state = 'pending') AS pending,
                  min(next_attempt_at) FILTER (WHERE state = 'deferred') AS due
           FROM invitations
           WHERE campaign_id = $1 AND id BETWEEN $2 AND $3 AND state IN ('pending', 'deferred')
           GROUP BY 1 ORDER BY 1""",
        campaign_id,
        first_id,
        last_id,
        client_zone,
    )
    return [ZoneWork(r["zone"], r["pending"], r["due"]) for r in rows]


async def day_left(conn: Conn, campaign_id: int, day: date, per_day: int) -> int:
    """How many more messages the campaign may start on `day` (its client's calendar).

    Call inside the claim's transaction: the day's row stays locked until it ends, so the
    claims of a paced campaign take turns and `count_day` adds what this one started.
    """
    sent: int = await conn.fetchval(
        """INSERT INTO campaign_days (campaign_id, day) VALUES ($1, $2)
           ON CONFLICT (campaign_id, day) DO UPDATE SET sent = campaign_days.sent
           RETURNING sent""",
        campaign_id,
        day,
    )
    return max(per_day - sent, 0)


async def count_day(conn: Conn, campaign_id: int, day: date, started: int) -> None:
    """Count `started` messages on the campaign's `day`, in the claim's transaction."""
    await conn.execute(
        "UPDATE campaign_days SET sent = sent + $3 WHERE campaign_id = $1 AND day = $2",
        campaign_id,
        day,
        started,
    )


async def sent_on(conn: Conn, campaign_id: int, day: date) -> int:
    """How many messages the campaign started on `day` (its client's calendar)."""
    sent: int | None = await conn.fetchval(
        "SELECT sent FROM campaign_days WHERE campaign_id = $1 AND day = $2", campaign_id, day
    )
    return sent or 0


async def wait_until(conn: Conn, campaign_id: int, at: datetime) -> None:
    """Note that a slice of the campaign waits (window, quota) until `at`: the earliest
    such time still ahead is kept."""
    await conn.execute(
        """UPDATE campaigns
           SET waiting_until = CASE WHEN waiting_until > now() THEN least(waiting_until, $2)
                                    ELSE $2 END
           WHERE id = $1""",
        campaign_id,
        at,
    )


async def start_scheduled(conn: Conn, campaign_id: int | None = None) -> list[int]:
    """Move the scheduled campaigns whose start came (or only `campaign_id`) to running;
    the ids moved, each by one caller only."""
    rows = await conn.fetch(
        """UPDATE campaigns SET status = 'running'
           WHERE status = 'scheduled' AND start_at <= now()
             AND ($1::bigint IS NULL OR id = $1)
           RETURNING id""",
        campaign_id,
    )
    return sorted(r["id"] for r in rows)


async def close_due(conn: Conn, campaign_id: int | None = None) -> list[int]:
    """Close the campaigns whose close came (or only `campaign_id`): their invitations not
    yet sent end `expired`, and each with none on the wire any more ends `completed`;
    the ids completed now. Idempotent; one still sending is completed by a later call,
    or by the slice that records its last outcomes."""
    async with conn.transaction():
        due = await conn.fetch(
            """SELECT id FROM campaigns
               WHERE close_at <= now() AND status IN ('scheduled', 'running', 'paused')
                 AND ($1::bigint IS NULL OR id = $1)
               ORDER BY id FOR UPDATE""",
            campaign_id,
        )
        ids = [r["id"] for r in due]
        if not ids:
            return []
        await conn.execute(
            """UPDATE invitations
               SET state = 'expired', reason = 'closed', lease_until = NULL,
                   claimed_by = NULL, updated_at = now()
               WHERE campaign_id = ANY($1::bigint[]) AND state IN ('pending', 'deferred')""",
            ids,
        )
        rows = await conn.fetch(
            """UPDATE campaigns c SET status = 'completed', completed_at = now()
               WHERE c.id = ANY($1::bigint[])
                 AND NOT EXISTS (SELECT 1 FROM invitations i
                                 WHERE i.campaign_id = c.id AND i.state = 'sending')
               RETURNING c.id""",
            ids,
        )
    return sorted(r["id"] for r in rows)


async def counts(conn: Conn, campaign_id: int) -> dict[str, int]:
    """Number of first invitations of the campaign in each state (reminders: `rounds`)."""
    rows = await conn.fetch(
        """SELECT state, count(*) AS n FROM invitations WHERE campaign_id = $1 AND round = 0
           GROUP BY state""",
        campaign_id,
    )
    return {r["state"]: r["n"] for r in rows}


async def sending_workers(conn: Conn, campaign_id: int) -> list[str]:
    """The worker processes that hold first invitations of the campaign `sending` (whose
    send journals say how far each of those messages got)."""
    rows = await conn.fetch(
        """SELECT DISTINCT claimed_by FROM invitations
           WHERE campaign_id = $1 AND round = 0 AND state = 'sending'
             AND claimed_by IS NOT NULL""",
        campaign_id,
    )
    return [r["claimed_by"] for r in rows]


async def count_sending(conn: Conn, campaign_id: int, invitation_ids: Sequence[int]) -> int:
    """How many of `invitation_ids` are first invitations of the campaign still `sending`."""
    n: int = await conn.fetchval(
        """SELECT count(*) FROM invitations
           WHERE campaign_id = $1 AND round = 0 AND state = 'sending' AND id = ANY($2::bigint[])""",
        campaign_id,
        list(invitation_ids),
    )
    return n


async def list_campaigns(
    conn: Conn, *, client_id: str | None = None, status: CampaignStatus | None = None
) -> list[CampaignSummary]:
    """The campaigns, of one client and in one status when given, newest first, each with
    its first invitations counted by state (as `counts`), and when it ended (None while it
    runs or is paused, a retried campaign's earlier end too)."""
    rows = await conn.fetch(
        """SELECT c.id, c.client_id, c.name, c.kind, c.status, c.created_at,
                  CASE WHEN c.status = ANY($3) THEN c.completed_at END AS finished_at,
                  (SELECT coalesce(jsonb_object_agg(state, n), '{}') FROM (
                       SELECT state, count(*) AS n FROM invitations
                       WHERE campaign_id = c.id AND round = 0 GROUP BY state) s) AS counts
           FROM campaigns c
           WHERE ($1::text IS NULL OR c.client_id = $1) AND ($2::text IS NULL OR c.status = $2)
           ORDER BY c.created_at DESC, c.id DESC""",
        client_id,
        status,
        list(ENDED_STATUSES),
    )
    return [CampaignSummary(**dict(r)) for r in rows]


async def rounds(conn: Conn, campaign_id: int) -> list[Round]:
    """The campaign's reminder rounds, due from its first accepted message on."""
    rows = await conn.fetch(
        """SELECT r.round,
                  (SELECT min(sent_at) FROM invitations
                   WHERE campaign_id = c.id AND round = 0 AND state = 'sent')
                      + r.round * c.reminder_interval AS due_at,
                  (SELECT coalesce(jsonb_object_agg(state, n), '{}') FROM (
                       SELECT state, count(*) AS n FROM invitations
                       WHERE campaign_id = c.id AND round = r.round GROUP BY state) s) AS counts
           FROM campaigns c CROSS JOIN generate_series(1, c.reminders) AS r(round)
           WHERE c.id = $1
           ORDER BY r.round""",
        campaign_id,
    )
    return [Round(r["round"], r["due_at"], r["counts"]) for r in rows]


async def reason_counts(conn: Conn, campaign_id: int) -> dict[str, int]:
    """Number of suppressed or failed first invitations of the campaign per reason."""
    rows = await conn.fetch(
        """SELECT state || ':' || coalesce(reason, '') AS key, count(*) AS n
           FROM invitations
           WHERE campaign_id = $1 AND round = 0 AND state IN ('suppressed', 'failed')
           GROUP BY 1 ORDER BY 1""",
        campaign_id,
    )
    return {r["key"]: r["n"] for r in rows}


async def complete_if_done(conn: Conn, campaign_id: int) -> bool:
    """Mark a running campaign completed when none of its invitations is open and every
    reminder round was created (or it closed: no round comes after the close).

    Returns True only to the one caller that made the change.
    """
    status = await conn.fetchval(
        """UPDATE campaigns SET status = 'completed', completed_at = now()
           WHERE id = $1 AND status = 'running'
             AND (reminder_rounds_created >= reminders OR close_at <= now())
             AND NOT EXISTS (SELECT 1 FROM invitations
                             WHERE campaign_id = $1
                               AND state IN ('pending', 'sending', 'deferred'))
           RETURNING status""",
        campaign_id,
    )
    return status is not None


async def fail_campaign(conn: Conn, campaign_id: int, reason: str) -> bool:
    """Stop a running campaign for good with a reason; True if this call did it."""
    status = await conn.fetchval(
        """UPDATE campaigns SET status = 'failed', reason = $2, completed_at = now()
           WHERE id = $1 AND status IN ('running', 'paused') RETURNING status""",
        campaign_id,
        reason,
    )
    return status is not None


async def run_seconds(conn: Conn, campaign_id: int) -> float | None:
    """Seconds from the campaign's creation to its completion (None while it runs)."""
    elapsed = await conn.fetchval(
        "SELECT extract(epoch FROM completed_at - created_at) FROM campaigns WHERE id = $1",
        campaign_id,
    )
    return None if elapsed is None else float(elapsed)


async def campaign_of(conn: Conn, invitation_id: int) -> int | None:
    """The campaign an invitation belongs to, or None when there is no such invitation."""
    campaign_id: int | None = await conn.fetchval(
        "SELECT campaign_id FROM invitations WHERE id = $1", invitation_id
    )
    return campaign_id


async def status_reason(conn: Conn, campaign_id: int) -> str | None:
    """Why the campaign is in its status (failed, or paused by the reputation guard)."""
    reason: str | None = await conn.fetchval(
        "SELECT reason FROM campaigns WHERE id = $1", campaign_id
    )
    return reason


async def campaign_status(conn: Conn, campaign_id: int) -> CampaignStatus | None:
    """The campaign's status, read fresh (pause and cancel take effect per chunk)."""
    status: CampaignStatus | None = await conn.fetchval(
        "SELECT status FROM campaigns WHERE id = $1", campaign_id
    )
    return status


async def expired_sending(conn: Conn) -> dict[str, list[Expired]]:
    """The `sending` invitations whose lease ran out, by the worker that claimed them.

    That worker died (or stalled) between marking its chunk `sending` and recording the
    outcomes; `reconcile` settles them from the worker's send journal with `record`.
    """
    rows = await conn.fetch(
        """SELECT i.id, i.campaign_id, c.client_id, i.email_hash, cl.sender_email,
                  i.round, i.claimed_by
           FROM invitations i
           JOIN campaigns c ON c.id = i.campaign_id
           JOIN clients cl ON cl.id = c.client_id
           WHERE i.state = 'sending' AND i.lease_until < now()
           ORDER BY i.id"""
    )
    by_worker: dict[str, list[Expired]] = {}
    for r in rows:
        expired = Expired(
            r["id"],
            r["campaign_id"],
            r["client_id"],
            r["email_hash"],
            r["sender_email"],
            r["round"],
        )
        by_worker.setdefault(r["claimed_by"], []).append(expired)
    return by_worker


# A pass creating a due round looks again at the first messages accepted this long before
# where the pass before it stopped: an acceptance commits a moment after its `sent_at`.
SCAN_OVERLAP = timedelta(minutes=5)


async def create_due_reminders(conn: Conn) -> list[int]:
    """Create the reminder invitations that are due; the campaigns that got some.

    Round r of a running campaign follows up each first message accepted at
    least r x its reminder interval ago whose person has not completed the survey (nor
    been erased). A round is created once every first message is final and the last one
    accepted is due too; the campaign stays `running` until its last round was created.
    Until then, each pass looks only at the first messages accepted since the one before
    (less SCAN_OVERLAP, for acceptances that committed late), and the pass that completes
    the round at all of them. Safe to run concurrently and repeatedly: a person gets one
    row per round. Whether the reminder may then be sent (opt-outs, bounces, completion)
    is decided at send time.
    """
    async with conn.transaction():
        due = await conn.fetch(
            """SELECT c.id, r.round, c.reminder_interval,
                      s.scanned_until,
                      NOT EXISTS (SELECT 1 FROM invitations i
                                  WHERE i.campaign_id = c.id AND i.round = 0
                                    AND i.state IN ('pending', 'sending', 'deferred'))
                      AND coalesce((SELECT max(sent_at) FROM invitations i
                                    WHERE i.campaign_id = c.id AND i.round = 0
                                      AND i.state = 'sent'), '-infinity')
                          <= now() - r.round * c.reminder_interval AS complete
               FROM campaigns c
               CROSS JOIN generate_series(c.reminder_rounds_created + 1, c.reminders) r(round)
               LEFT JOIN reminder_scans s ON s.campaign_id = c.id AND s.round = r.round
               WHERE c.reminders > c.reminder_rounds_created
                 AND c.status = 'running'
               ORDER BY c.id, r.round
               FOR UPDATE OF c"""
        )
        if not due:
            return []
        created = await conn.fetch(
            """INSERT INTO invitations
                   (campaign_id, email, email_hash, locale, timezone, vars, round, parent_id)
               SELECT f.campaign_id, f.email, f.email_hash, f.locale, f.timezone, f.vars,
                      d.round, f.id
               FROM unnest($1::bigint[], $2::int[], $3::interval[], $4::timestamptz[])
                   AS d(campaign_id, round, every, after)
               JOIN invitations f ON f.campaign_id = d.campaign_id
               WHERE f.round = 0 AND f.state = 'sent' AND f.email IS NOT NULL
                 AND f.completed_at IS NULL
                 AND f.sent_at > coalesce(d.after, '-infinity')
                 AND f.sent_at <= now() - d.round * d.every
               ORDER BY f.campaign_id, d.round, f.id
               ON CONFLICT (campaign_id, email_hash, round) DO NOTHING
               RETURNING campaign_id""",
            [r["id"] for r in due],
            [r["round"] for r in due],
            [r["reminder_interval"] for r in due],
            # The pass that completes a round looks at every first message once more.
            [None if r["complete"] else r["scanned_until"] for r in due],
        )
        await _scanned(conn, due)
    return sorted({r["campaign_id"] for r in created})


async def _scanned(conn: Conn, due: Sequence[Any]) -> None:
    """After a pass of `create_due_reminders`: where each open round's next pass starts,
    and the rounds now created in full (their scans dropped)."""
    open_rounds = [r for r in due if not r["complete"]]
    await conn.execute(
        """INSERT INTO reminder_scans AS s (campaign_id, round, scanned_until)
           SELECT d.campaign_id, d.round, now() - d.round * d.every - $4::interval
           FROM unnest($1::bigint[], $2::int[], $3::interval[]) AS d(campaign_id, round, every)
           ON CONFLICT (campaign_id, round) DO UPDATE
           SET scanned_until = greatest(s.scanned_until, EXCLUDED.scanned_until)""",
        [r["id"] for r in open_rounds],
        [r["round"] for r in open_rounds],
        [r["reminder_interval"] for r in open_rounds],
        SCAN_OVERLAP,
    )
    # A round is complete once its last first message is due: so are those before it.
    done: dict[int, int] = {}
    for row in due:
        if row["complete"]:
            done[row["id"]] = max(done.get(row["id"], 0), row["round"])
    for campaign_id, rounds_done in done.items():
        await conn.execute(
            "UPDATE campaigns SET reminder_rounds_created = $2 WHERE id = $1",
            campaign_id,
            rounds_done,
        )
        await conn.execute(
            "DELETE FROM reminder_scans WHERE campaign_id = $1 AND round <= $2",
            campaign_id,
            rounds_done,
        )


async def stalled_campaigns(conn: Conn, idle_seconds: float) -> list[int]:
    """Running campaigns with due work that no worker has touched for `idle_seconds`.

    Their jobs were lost (Redis flushed or restarted, a worker killed): `reconcile`
    launches them again; claims make the repeat harmless. A campaign whose slices wait
    for its window or the day's quota (`waiting_until` ahead) is not stalled.
    """
    rows = await conn.fetch(
        """SELECT c.id FROM campaigns c
           WHERE c.status = 'running'
             AND (c.waiting_until IS NULL OR c.waiting_until <= now())
             AND EXISTS (SELECT 1 FROM invitations i
                         WHERE i.campaign_id = c.id
                           AND (i.state = 'pending'
                                OR (i.state = 'deferred' AND i.next_attempt_at <= now())))
             AND NOT EXISTS (SELECT 1 FROM invitations i
                             WHERE i.campaign_id = c.id
                               AND i.updated_at > now() - make_interval(secs => $1))
             AND c.created_at < now() - make_interval(secs => $1)
           ORDER BY c.id""",
        idle_seconds,
    )
    return [r["id"] for r in rows]


async def finished_running_campaigns(conn: Conn) -> list[int]:
    """Running campaigns none of whose invitations is open any more."""
    rows = await conn.fetch(
        """SELECT c.id FROM campaigns c
           WHERE c.status = 'running'
             AND (c.reminder_rounds_created >= c.reminders OR c.close_at <= now())
             AND NOT EXISTS (SELECT 1 FROM invitations i
                             WHERE i.campaign_id = c.id
                               AND i.state IN ('pending', 'sending', 'deferred'))"""
    )
    return [r["id"] for r in rows]


async def set_status(
    conn: Conn,
    campaign_id: int,
    new: CampaignStatus,
    allowed_from: tuple[CampaignStatus, ...],
    *,
    reason: str | None = None,
) -> bool:
    """Move a campaign to `new` if it is in one of `allowed_from`, with `reason` (why it
    paused itself, say; None clears it); True if it moved."""
    moved = await conn.fetchval(
        """UPDATE campaigns SET status = $2, reason = $4,
               completed_at = CASE WHEN $2 = 'cancelled' THEN now() ELSE completed_at END
           WHERE id = $1 AND status = ANY($3) RETURNING true""",
        campaign_id,
        new,
        list(allowed_from),
        reason,
    )
    return bool(moved)


async def cancel_open(conn: Conn, campaign_id: int) -> int:
    """Mark the invitations of a cancelled campaign that have not started sending
    `cancelled` (waiting for workers to let go of rows they hold); idempotent."""
    result = await conn.execute(
        """UPDATE invitations SET state = 'cancelled', reason = 'campaign_cancelled',
               lease_until = NULL, claimed_by = NULL, updated_at = now()
           WHERE campaign_id = $1 AND state IN ('pending', 'deferred')
             AND EXISTS (SELECT 1 FROM campaigns WHERE id = $1 AND status = 'cancelled')""",
        campaign_id,
    )
    return row_count(result)


async def reopen_unknown(conn: Conn, campaign_id: int) -> int:
    """Put the campaign's `unknown` invitations back to `pending` (ops chose to resend)."""
    result = await conn.execute(
        """UPDATE invitations SET state = 'pending', reason = 'resend_unknown',
               updated_at = now()
           WHERE campaign_id = $1 AND state = 'unknown'""",
        campaign_id,
    )
    return row_count(result)


async def reopen_failed(
    conn: Conn, campaign_id: int, reasons: Sequence[str]
) -> dict[str, int] | None:
    """Put the campaign's `failed` invitations whose reason is one of `reasons` back to
    `pending` with no attempt counted (`retry`: a fresh RETRY_HORIZON); how many per
    reason, or None when the campaign is cancelled (then nothing changed).

    Call inside a transaction: the campaign's row stays locked until it ends, so a cancel
    either comes first (and this finds it cancelled) or marks these cancelled after it.
    """
    status = await conn.fetchval(
        "SELECT status FROM campaigns WHERE id = $1 FOR UPDATE", campaign_id
    )
    if status == "cancelled":
        return None
    rows = await conn.fetch(
        """WITH picked AS (
               SELECT id, reason FROM invitations
               WHERE campaign_id = $1 AND state = 'failed' AND reason = ANY($2::text[])
               FOR UPDATE),
           upd AS (
               UPDATE invitations i
               SET state = 'pending', reason = 'retry', attempts = 0, smtp_code = NULL,
                   first_attempt_at = NULL, next_attempt_at = NULL, updated_at = now()
               FROM picked WHERE i.id = picked.id
               RETURNING picked.reason)
           SELECT reason, count(*) AS n FROM upd GROUP BY reason ORDER BY reason""",
        campaign_id,
        list(reasons),
    )
    return {r["reason"]: r["n"] for r in rows}


async def mark_completed(
    conn: Conn, invitation_ids: Sequence[int]
) -> tuple[set[int], list[Completed]]:
    """Set `completed_at` on those of the invitations that have none yet (in the caller's
    transaction): the ids of those that still exist, and those completed now."""
    # Locked in id order first, so concurrent completions never deadlock; NO KEY UPDATE
    # does not wait for rows that merely reference these (reminders' parent_id).
    still_there = await conn.fetch(
        """SELECT id FROM invitations WHERE id = ANY($1::bigint[])
           ORDER BY id FOR NO KEY UPDATE""",
        invitation_ids,
    )
    rows = await conn.fetch(
        """UPDATE invitations i SET completed_at = now()
           FROM campaigns c
           WHERE i.id = ANY($1::bigint[]) AND i.completed_at IS NULL
             AND c.id = i.campaign_id
           RETURNING i.id, i.campaign_id, c.client_id, i.email_hash""",
        invitation_ids,
    )
    return {r["id"] for r in still_there}, [
        Completed(r["id"], r["campaign_id"], r["client_id"], bytes(r["email_hash"])) for r in rows
    ]


async def erase_addresses(conn: Conn, email_hash: bytes) -> int:
    """Forget the clear address and template variables of every invitation to
    `email_hash`, keeping the hash; how many invitations held either."""
    result = await conn.execute(
        """UPDATE invitations SET email = NULL, vars = '{}', updated_at = now()
           WHERE email_hash = $1 AND (email IS NOT NULL OR vars <> '{}')""",
        email_hash,
    )
    return row_count(result)


async def trim_recent_sends(conn: Conn, older_than: timedelta) -> int:
    """Delete the send-rate chart's counts older than `older_than` (retention); how many."""
    result = await conn.execute(
        "DELETE FROM recent_sends WHERE at < now() - $1::interval", older_than
    )
    return row_count(result)


async def delete_invitations(conn: Conn, campaign_id: int, *, limit: int) -> int:
    """Delete up to `limit` of the campaign's invitations (retention); how many went."""
    result = await conn.execute(
        """DELETE FROM invitations WHERE id IN (
               SELECT id FROM invitations WHERE campaign_id = $1 LIMIT $2)""",
        campaign_id,
        limit,
    )
    return row_count(result)
