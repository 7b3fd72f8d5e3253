"""Postgres connections and the migration runner."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypeAlias

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from worker.errors import ConfigError
from worker.resources import bundled

# A connection of its own or one borrowed from a pool: the queries take either.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

# What a lost, refused or broken database connection raises.
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

SQL_DIR = bundled("sql")
MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
# Any fixed number: it only has to be the same in every process that migrates.
MIGRATION_LOCK = 0x5157_0001


async def init_connection(conn: Conn) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


async def create_pool(
    url: str,
    *,
    max_size: int = 10,
    synchronous_commit: bool = True,
    min_size: int = 1,
    connect_timeout: float = 60,
    command_timeout: float = 60,
) -> asyncpg.Pool:
    """A connection pool whose jsonb columns read and write Python objects.

    The worker's pool commits asynchronously: what it writes besides the `sending` mark
    (claims, outcomes) is safe to lose in a database crash, see `ledger.start_chunk`.
    With `min_size=0` (the web app's pools) nothing connects until the first query.
    """
    settings = {} if synchronous_commit else {"synchronous_commit": "off"}
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            init=init_connection,
            timeout=connect_timeout,
            command_timeout=command_timeout,
            server_settings=settings,
        )
    except DB_ERRORS as e:
        raise ConfigError(f"cannot connect to Postgres: {e}") from e
    assert pool is not None
    return pool


def migration_files(sql_dir: Path = SQL_DIR) -> list[tuple[int, Path]]:
    """The numbered migrations in `sql_dir`, in the order they apply."""
    found = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = MIGRATION_NAME.match(path.name)
        if match is None:
            raise ConfigError(f"{path.name}: migrations are named NNN_description.sql")
        found.append((int(match.group(1)), path))
    versions = [v for v, _ in found]
    if len(set(versions)) != len(versions):
        raise ConfigError("two migrations share a number")
    return found


async def migrate(conn: Conn, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply the migrations not applied yet, each in its own transaction; return their names.

    Safe to run concurrently and repeatedly: an advisory lock serialises runners and the
    `schema_migrations` table records what is applied.
    """
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version    integer PRIMARY KEY,
               name       text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, path in migration_files(sql_dir):
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    version,
                    path.name,
                )
            applied.append(path.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied


async def ping(conn: Conn) -> None:
    """Return once Postgres answers on `conn`."""
    await conn.fetchval("SELECT 1")


async def has_schema(conn: Conn) -> bool:
    """Whether `migrate` has created the schema in this database."""
    found: bool = await conn.fetchval("SELECT to_regclass('campaigns') IS NOT NULL")
    return found


def row_count(status: str) -> int:
    """The row count of a command status such as `UPDATE 3`."""
    return int(status.rsplit(" ", 1)[-1])
