"""Postgres connections and the migration runner."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeAlias

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from worker.errors import ConfigError
from worker.resources import bundled

# A connection of its own or one borrowed from a pool: the queries take either.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

# DATABASE_POOL_MODE: what sits between the processes and Postgres (docs/scaling.md).
PoolMode: TypeAlias = Literal["session", "transaction"]
# The worker's sessions commit asynchronously, unless the server commits to a synchronous
# standby: then every commit it acknowledges must survive a failover, and outcomes a lost
# primary acknowledged but never passed on would be lost with their journal (docs/scaling.md).
ASYNC_COMMIT = (
    "SELECT set_config('synchronous_commit', 'off', false)"
    " WHERE current_setting('synchronous_standby_names') = ''"
)

# What a lost, refused or broken database connection raises; and a URL's hosts all
# reachable but none of them what its `target_session_attrs` asks for (a standby not yet
# promoted, for `read-write`).
DB_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.TargetServerAttributeNotMatched,
)

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


def connect_options(pool_mode: PoolMode) -> dict[str, Any]:
    """asyncpg's connection options for DATABASE_POOL_MODE (docs/scaling.md).

    Never a startup parameter: PgBouncer refuses those it does not know, by default.
    In `transaction` mode the server connection changes at each transaction, so nothing
    may be prepared by name (asyncpg then uses the unnamed statement, which lives for
    one query).
    """
    return {"statement_cache_size": 0} if pool_mode == "transaction" else {}


async def connect(
    url: str, *, pool_mode: PoolMode = "session", connect_timeout: float = 60
) -> asyncpg.Connection[asyncpg.Record]:
    """One connection to `url`, for DATABASE_POOL_MODE, its jsonb columns read and written
    as Python objects; raises one of `DB_ERRORS` when it cannot be made."""
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(
        url, timeout=connect_timeout, **connect_options(pool_mode)
    )
    try:
        await init_connection(conn)
    except BaseException:
        conn.terminate()
        raise
    return conn


async def create_pool(
    url: str,
    *,
    max_size: int = 10,
    synchronous_commit: bool = True,
    pool_mode: PoolMode = "session",
    min_size: int = 1,
    connect_timeout: float = 60,
    command_timeout: float = 60,
) -> asyncpg.Pool:
    """A connection pool for DATABASE_POOL_MODE whose jsonb columns read and write Python
    objects. With `min_size=0` nothing connects before the first query, so the caller (the
    web app) starts while Postgres is down.

    The worker's pool commits asynchronously: what it writes besides the `sending` mark
    (claims, outcomes) is safe to lose in a database crash, see `ledger.start_chunk`. In
    `session` mode that is a session setting, made again each time a connection goes back
    to the pool (asyncpg's reset runs RESET ALL). In `transaction` mode a session setting
    would stay on PgBouncer's server connection for other clients, so commits stay
    synchronous (docs/scaling.md). They stay synchronous too on a server with
    `synchronous_standby_names`: an outcome written to a primary that is lost before its
    standby has it would leave its invitations `sending`, and the send journal that says
    they went out may already hold the next chunk by then.
    """
    reset = None
    if not synchronous_commit and pool_mode == "session":

        async def init(conn: Conn) -> None:
            await init_connection(conn)
            await conn.execute(ASYNC_COMMIT)

        async def reset_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
            await conn.execute(conn.get_reset_query() + "\n" + ASYNC_COMMIT)

        reset = reset_connection
    else:
        init = init_connection
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            init=init,
            reset=reset,
            timeout=connect_timeout,
            command_timeout=command_timeout,
            **connect_options(pool_mode),
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

    Safe to run concurrently and repeatedly, also through PgBouncer in transaction pooling:
    each migration's transaction takes an advisory lock that serialises runners, and the
    `schema_migrations` table records what is applied.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
    applied: list[str] = []
    for version, path in migration_files(sql_dir):
        async with conn.transaction():
            # A lock of the transaction's, not the session's: PgBouncer in transaction
            # pooling may hand the next statement another server connection.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            done = await conn.fetchval(
                "SELECT EXISTS (SELECT FROM schema_migrations WHERE version = $1)", version
            )
            if done:
                continue
            await conn.execute(path.read_text())
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                version,
                path.name,
            )
        applied.append(path.name)
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
