"""A fresh, migrated database for one bench run on the embedded cluster, dropped after."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import asyncpg

from worker import db

PREFIX = "bench_"


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@contextlib.asynccontextmanager
async def fresh_database(admin_url: str) -> AsyncIterator[str]:
    """Create and migrate `bench_<pid>`, yield its URL, drop it (even after a failure).

    The caller holds the bench lock, so another `bench_` database is a killed run's: it is
    dropped first.
    """
    name = f"{PREFIX}{os.getpid()}"
    admin = await asyncpg.connect(admin_url)
    try:
        for stale in await admin.fetch(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1)", PREFIX
        ):
            await admin.execute(f"DROP DATABASE {stale['datname']} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    url = _with_database(admin_url, name)
    try:
        conn = await asyncpg.connect(url)
        try:
            await db.migrate(conn)
        finally:
            await conn.close()
        yield url
    finally:
        await drop_database(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    """Drop the database `name`, its sessions closed first."""
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()
