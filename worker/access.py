"""Access requests: everything held about one address, as one JSON document.

`survey-worker access-request EMAIL --actor WHO` runs as the `privacy_officer` role (like
the other privacy operations, see worker/privacy.py), in one repeatable-read transaction
so the document is one consistent picture, and writes an `access` audit row. Every table
that identifies a person by keyed hash (`email_hash`) is read, found in the catalogue rather
than listed here, so a table added later is never forgotten; each is read through an index
on that column (tests/test_access_request.py proves there is one for every such table).
Invitations come with their campaign and client. After an erasure, what is left is what
the document shows: rows without the address, the hashes that keep the person suppressed;
the address asked about appears only while some row still holds it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

from worker import addresses, optouts
from worker.db import Conn
from worker.errors import PermissionDenied
from worker.privacy import PRIVACY_ROLE, act_as

log = structlog.get_logger("worker.access")

_TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]*")
# A table's rows of one address, without the hash (the document shows it once).
_BY_HASH = """SELECT to_jsonb(t) - 'email_hash' AS row FROM "{table}" t
              WHERE t.email_hash = $1"""


@dataclass(frozen=True)
class AccessReport:
    """The document, and what it holds, for the command's summary line."""

    document: dict[str, Any]

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.document["held"].items()}

    def as_bytes(self) -> bytes:
        return orjson.dumps(self.document, option=orjson.OPT_INDENT_2)


async def address_tables(conn: Conn) -> list[str]:
    """The tables of the schema with an `email_hash` column, by name (from the catalogue:
    information_schema would hide the ones the role may not read)."""
    rows = await conn.fetch(
        """SELECT c.relname FROM pg_attribute a
           JOIN pg_class c ON c.oid = a.attrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
             AND a.attname = 'email_hash' AND NOT a.attisdropped
           ORDER BY c.relname"""
    )
    return [r["relname"] for r in rows if _TABLE_NAME.fullmatch(r["relname"])]


def queries(tables: list[str]) -> dict[str, str]:
    """The query of each section of the document; $1 is the keyed hash."""
    found = {
        # An invitation with the campaign and client it belongs to.
        "invitations": """
            SELECT jsonb_build_object(
                       'client_id', c.client_id, 'client_name', cl.name,
                       'campaign_id', c.id, 'campaign_name', c.name, 'kind', c.kind,
                       'template', c.template, 'campaign_created_at', c.created_at)
                   || (to_jsonb(i) - 'email_hash') AS row
            FROM invitations i
            JOIN campaigns c ON c.id = i.campaign_id
            JOIN clients cl ON cl.id = c.client_id
            WHERE i.email_hash = $1 ORDER BY i.id"""
    }
    for table in tables:
        if table not in found:
            # Names come from the catalogue and match _TABLE_NAME; the value is a parameter.
            found[table] = _BY_HASH.format(table=table)
    return found


async def request(conn: Conn, *, email: str, email_hash: bytes, actor: str) -> AccessReport:
    """Everything held about the address, across all clients, and an audit row saying who
    asked. PermissionDenied, writing nothing, for a user without the privacy role."""
    async with conn.transaction(isolation="repeatable_read"):
        await act_as(conn, PRIVACY_ROLE)
        if not await conn.fetchval(
            "SELECT has_column_privilege('client_opt_outs', 'email', 'SELECT')"
        ):
            raise PermissionDenied(f"access-request needs the {PRIVACY_ROLE} role")
        await optouts.audit(
            conn, "access", "all", email_hash=email_hash, actor=actor, reason="access request"
        )
        held: dict[str, list[Any]] = {}
        for section, sql in queries(await address_tables(conn)).items():
            held[section] = [r["row"] for r in await conn.fetch(sql, email_hash)]
    clear_address_held = any(
        isinstance(row, dict) and row.get("email") for rows in held.values() for row in rows
    )
    # The address asked about is shown only while something still holds it in clear:
    # after an erasure the document holds the hashes left, never the address again.
    asked = {"email": email} if clear_address_held else {}
    document = {
        "request": {
            **asked,
            "email_hash": email_hash.hex(),
            "actor": actor,
            "generated_at": datetime.now(UTC).isoformat(),
        },
        "erased": not clear_address_held
        and any(r.get("action") == "erase" for r in held.get("opt_out_audit", [])),
        "held": held,
    }
    log.info(
        "address.accessed",
        recipient=addresses.recipient_id(email_hash),
        rows=sum(len(v) for v in held.values()),
    )
    return AccessReport(document)
