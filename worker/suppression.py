"""Who must not be mailed: the send-time opt-out check.

`lookup` runs one query for a whole chunk of recipients; `decide` is the pure rule. A
survey invitation is checked against its own client's opt-out list only, marketing mail
against the firm's marketing list, and both against the global bounce list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from worker.db import DB_ERRORS, Conn
from worker.errors import SuppressionUnavailable
from worker.states import Kind

# The order reasons are reported in when several apply.
REASONS = ("client_opt_out", "marketing_opt_out", "bounced")


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
    conn: Conn, scope: Scope, hashes: Iterable[bytes], *, timeout: float
) -> dict[bytes, frozenset[str]]:
    """The suppression reasons that apply to each of `hashes` (absent: none apply).

    Raises SuppressionUnavailable when the check cannot run: the caller sends nothing.
    """
    try:
        rows = await conn.fetch(
            """SELECT email_hash, 'client_opt_out' AS reason FROM client_opt_outs
               WHERE $1 = 'survey' AND client_id = $2 AND email_hash = ANY($3)
               UNION ALL
               SELECT email_hash, 'marketing_opt_out' FROM marketing_opt_outs
               WHERE $1 = 'marketing' AND email_hash = ANY($3)
               UNION ALL
               SELECT email_hash, 'bounced' FROM bounces WHERE email_hash = ANY($3)""",
            scope.kind,
            scope.client_id,
            list(hashes),
            timeout=timeout,
        )
    except (TimeoutError, *DB_ERRORS) as e:
        raise SuppressionUnavailable(f"opt-out check failed: {type(e).__name__}") from e
    found: dict[bytes, set[str]] = {}
    for row in rows:
        found.setdefault(row["email_hash"], set()).add(row["reason"])
    return {h: frozenset(r) for h, r in found.items()}
