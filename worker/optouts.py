"""Recording opt-outs on a client's list or the marketing list, with an audit row."""

from __future__ import annotations

from worker.db import Conn
from worker.suppression import Scope


def scope_label(scope: Scope) -> str:
    """How a scope is named in the audit table and in logs."""
    return "marketing" if scope.kind == "marketing" else f"client:{scope.client_id}"


async def add(
    conn: Conn,
    scope: Scope,
    *,
    email_hash: bytes,
    email: str | None,
    source: str,
    actor: str,
) -> bool:
    """Put an address on the scope's opt-out list; True if it was not there yet.

    Idempotent: repeating it changes nothing and writes no second audit row.
    """
    async with conn.transaction():
        if scope.kind == "marketing":
            inserted = await conn.fetchval(
                """INSERT INTO marketing_opt_outs (email_hash, email, source)
                   VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING true""",
                email_hash,
                email,
                source,
            )
        else:
            inserted = await conn.fetchval(
                """INSERT INTO client_opt_outs (client_id, email_hash, email, source)
                   VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true""",
                scope.client_id,
                email_hash,
                email,
                source,
            )
        if inserted:
            await conn.execute(
                """INSERT INTO opt_out_audit (action, scope, email_hash, actor, reason)
                   VALUES ('opt_out', $1, $2, $3, $4)""",
                scope_label(scope),
                email_hash,
                actor,
                source,
            )
    return bool(inserted)
