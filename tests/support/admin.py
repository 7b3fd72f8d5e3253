"""Cluster administration for tests: statements run on a connection of their own."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from worker import db


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` of the same server."""
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


async def admin(url: str, *statements: str) -> None:
    """Run `statements` (CREATE/DROP DATABASE cannot run in a transaction) on a fresh
    connection: tests that restart Postgres must not reuse an older one."""
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@asynccontextmanager
async def migrated_up_to(
    url: str, version: int, scratch: Path
) -> AsyncIterator[asyncpg.Connection]:
    """A new database on the server of `url` with the migrations up to `version` applied, to
    migrate on from; a connection to it, and the database dropped afterwards."""
    for number, path in db.migration_files():
        if number <= version:
            shutil.copy(path, scratch / path.name)
    name = f"t_{uuid.uuid4().hex[:12]}"
    await admin(url, f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(with_database(url, name))
    try:
        await db.migrate(conn, scratch)
        yield conn
    finally:
        await conn.close()
        await admin(url, f"DROP DATABASE {name} WITH (FORCE)")
