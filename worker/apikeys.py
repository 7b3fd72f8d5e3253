"""Clients' API keys: made, listed, revoked, and checked on every API request.

A key is `swk_` and 43 characters of URL-safe base64 (32 random bytes). It is shown once,
when it is made; the database keeps only its SHA-256, which is enough to recognise it
(a key has 256 bits of entropy: nothing is gained by a slow hash) and useless to anyone
who reads the table.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from worker.db import Conn
from worker.errors import InvalidClient, NotFound

PREFIX = "swk_"
# What a key looks like; anything else is refused before the database is asked.
KEY_PATTERN = re.compile(r"swk_[A-Za-z0-9_-]{43}")
MAX_NAME = 200
_NAME_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class ApiKey:
    """A key as `client key list` shows it (never the key itself)."""

    key_id: int
    client_id: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def as_json(self) -> dict[str, object]:
        """The `client key list --json` entry."""

        def iso(at: datetime | None) -> str | None:
            return None if at is None else at.isoformat(timespec="seconds")

        return {
            "key_id": self.key_id,
            "client_id": self.client_id,
            "name": self.name,
            "created_at": iso(self.created_at),
            "last_used_at": iso(self.last_used_at),
            "revoked_at": iso(self.revoked_at),
        }


def new_key() -> str:
    """A fresh random key."""
    return PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> bytes:
    """What the database stores of a key."""
    return hashlib.sha256(key.encode()).digest()


def looks_like_key(key: str) -> bool:
    """Whether `key` has the shape of a key (a cheap check before any lookup)."""
    return KEY_PATTERN.fullmatch(key) is not None


def check_name(name: str) -> str:
    """The key's label, stripped; InvalidClient when it cannot be one."""
    name = name.strip()
    if len(name) > MAX_NAME:
        raise InvalidClient(f"--name must be at most {MAX_NAME} characters")
    if _NAME_FORBIDDEN.search(name):
        raise InvalidClient("--name must not hold a line break or control character")
    return name


async def create(conn: Conn, client_id: str, *, name: str = "") -> tuple[int, str]:
    """Make a key for the client; its id and the key (the only time the key exists in
    clear). NotFound for an unknown client."""
    name = check_name(name)
    if not await conn.fetchval("SELECT true FROM clients WHERE id = $1", client_id):
        raise NotFound(f"unknown client {client_id!r}")
    key = new_key()
    key_id: int = await conn.fetchval(
        "INSERT INTO api_keys (client_id, name, key_hash) VALUES ($1, $2, $3) RETURNING id",
        client_id,
        name,
        key_hash(key),
    )
    return key_id, key


async def list_keys(conn: Conn, client_id: str) -> list[ApiKey]:
    """The client's keys, revoked ones too, oldest first. NotFound for an unknown client."""
    if not await conn.fetchval("SELECT true FROM clients WHERE id = $1", client_id):
        raise NotFound(f"unknown client {client_id!r}")
    rows = await conn.fetch(
        """SELECT id, client_id, name, created_at, last_used_at, revoked_at
           FROM api_keys WHERE client_id = $1 ORDER BY id""",
        client_id,
    )
    return [
        ApiKey(
            key_id=r["id"],
            client_id=r["client_id"],
            name=r["name"],
            created_at=r["created_at"],
            last_used_at=r["last_used_at"],
            revoked_at=r["revoked_at"],
        )
        for r in rows
    ]


async def revoke(conn: Conn, key_id: int) -> bool:
    """Revoke a key at once (idempotent); True if it was active. NotFound if no such key."""
    row = await conn.fetchrow(
        """UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
           RETURNING revoked_at = now() AS now_revoked""",
        key_id,
    )
    if row is None:
        raise NotFound(f"no API key {key_id}")
    return bool(row["now_revoked"])


@dataclass(frozen=True)
class Caller:
    """Who an API request comes from, and the key it presented (which Postgres checks
    again where a client's list is read; never shown in a repr or a log)."""

    key_id: int
    client_id: str
    key: str = field(repr=False)


async def authenticate(conn: Conn, key: str) -> Caller | None:
    """The client of an active key, or None. Notes the key's use at most once a minute
    (`last_used_at`, for key rotation), so a busy key does not write on every request."""
    if not looks_like_key(key):
        return None
    row = await conn.fetchrow(
        "SELECT id, client_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        key_hash(key),
    )
    if row is None:
        return None
    await conn.execute(
        """UPDATE api_keys SET last_used_at = now()
           WHERE id = $1
             AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')""",
        row["id"],
    )
    return Caller(row["id"], row["client_id"], key)


async def owns_campaign(conn: Conn, client_id: str, campaign_id: int) -> bool:
    """Whether the campaign exists and is the client's (another client's is not found)."""
    found: bool = await conn.fetchval(
        "SELECT true FROM campaigns WHERE id = $1 AND client_id = $2", campaign_id, client_id
    )
    return bool(found)
