"""Cluster administration for tests: statements run on a connection of their own."""

from __future__ import annotations

import asyncpg


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
