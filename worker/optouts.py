"""Recording opt-outs on a client's list or the marketing list, with an audit row."""

from __future__ import annotations

from worker.db import Conn, row_count
from worker.errors import NotFound
from worker.suppression import Scope
from worker.tokens import TokenClaims


async def client_name(conn: Conn, claims: TokenClaims) -> str | None:
    """The name of the client whose list a token names (None: marketing, or unknown)."""
    name: str | None = await conn.fetchval(
        "SELECT name FROM clients WHERE token_id = $1", claims.client_id
    )
    return name


async def require_client(conn: Conn, scope: Scope) -> None:
    """Refuse a client's list when there is no such client."""
    if scope.kind == "survey" and not await conn.fetchval(
        "SELECT true FROM clients WHERE id = $1", scope.client_id
    ):
        raise NotFound(f"unknown client {scope.client_id!r}")


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
            await audit(
                conn,
                "opt_out",
                scope_label(scope),
                email_hash=email_hash,
                actor=actor,
                reason=source,
            )
    return bool(inserted)


async def remove(conn: Conn, scope: Scope, *, email_hash: bytes) -> bool:
    """Take an address off the scope's opt-out list (no audit row: the caller writes it
    with its actor and reason); False if it was not on the list."""
    if scope.kind == "marketing":
        removed = await conn.fetchval(
            "DELETE FROM marketing_opt_outs WHERE email_hash = $1 RETURNING true", email_hash
        )
    else:
        removed = await conn.fetchval(
            """DELETE FROM client_opt_outs WHERE client_id = $1 AND email_hash = $2
               RETURNING true""",
            scope.client_id,
            email_hash,
        )
    return bool(removed)


async def erase_addresses(conn: Conn, email_hash: bytes) -> tuple[int, int]:
    """Forget the clear address of `email_hash` on every list, keeping the hash (which is
    all suppression needs); how many client-list and marketing-list entries held it."""
    client_lists = await conn.execute(
        """UPDATE client_opt_outs SET email = NULL
           WHERE email_hash = $1 AND email IS NOT NULL""",
        email_hash,
    )
    marketing = await conn.execute(
        """UPDATE marketing_opt_outs SET email = NULL
           WHERE email_hash = $1 AND email IS NOT NULL""",
        email_hash,
    )
    return row_count(client_lists), row_count(marketing)


async def audit(
    conn: Conn, action: str, scope: str, *, email_hash: bytes, actor: str, reason: str | None
) -> None:
    """Write an `opt_out_audit` row: `action` is opt_out, resubscribe or erase; `scope` a
    `scope_label`, or "all". The row holds the keyed hash, never the address."""
    await conn.execute(
        """INSERT INTO opt_out_audit (action, scope, email_hash, actor, reason)
           VALUES ($1, $2, $3, $4, $5)""",
        action,
        scope,
        email_hash,
        actor,
        reason,
    )


async def scopes_of(conn: Conn, claims: TokenClaims) -> list[Scope] | None:
    """The opt-out lists a token names, or None if its client no longer exists."""
    if claims.client_id is None:
        return [Scope("marketing", "")]
    client_id = await conn.fetchval("SELECT id FROM clients WHERE token_id = $1", claims.client_id)
    if client_id is None:
        return None
    return [Scope("survey", client_id)] + ([Scope("marketing", "")] if claims.marketing else [])


def scopes_label(scopes: list[Scope]) -> str:
    """How the lists one opt-out was recorded on are named in logs."""
    return "+".join(scope_label(s) for s in scopes)


async def add_from_token(conn: Conn, claims: TokenClaims, *, source: str) -> list[Scope] | None:
    """Record the opt-out a verified unsubscribe token asks for, on each list it names;
    return those lists (None: the token's client no longer exists, nothing recorded).

    The clear address, when some invitation still holds it, is kept beside the hash so the
    list can be exported to the client; after erasure or retention only the hash remains,
    which is all suppression needs.
    """
    scopes = await scopes_of(conn, claims)
    if scopes is None:
        return None
    async with conn.transaction():
        for scope in scopes:
            email = await conn.fetchval(
                """SELECT i.email FROM invitations i JOIN campaigns c ON c.id = i.campaign_id
                   WHERE i.email_hash = $1 AND i.email IS NOT NULL
                     AND ($2 = 'marketing' OR c.client_id = $3)
                   LIMIT 1""",
                claims.email_hash,
                scope.kind,
                scope.client_id,
            )
            await add(
                conn,
                scope,
                email_hash=claims.email_hash,
                email=email,
                source=source,
                actor="recipient",
            )
    return scopes
