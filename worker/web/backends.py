"""What the web app reaches: Postgres and Redis (`Backends`), the one pool builder of the
web roles (`open_pool`), and what the handlers find in the lifespan state (`WebContext`).

Nothing connects at start-up, so the app starts and answers while either server is down.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from arq.connections import ArqRedis

from worker import db, held_optouts, queue, tokens
from worker.db import DB_ERRORS
from worker.errors import QueueUnavailable, UnusableUrl
from worker.settings import postgres_url_problem
from worker.web import pages

CONNECT_TIMEOUT = 3.0
QUERY_TIMEOUT = 5.0
QUEUE_TIMEOUT = 3.0
POOL_SIZE = 5


async def open_pool(
    url: str, *, query_timeout: float, pool_mode: db.PoolMode = "session"
) -> asyncpg.Pool | None:
    """A pool of one web role's Postgres login (min_size=0: it connects on the first query,
    so the app starts while Postgres is down); None when `url` cannot work."""
    if postgres_url_problem(url):
        return None
    return await db.create_pool(
        url,
        min_size=0,
        max_size=POOL_SIZE,
        connect_timeout=CONNECT_TIMEOUT,
        command_timeout=query_timeout,
        pool_mode=pool_mode,
    )


class Backends:
    """Postgres and Redis as the app reaches them.

    Nothing connects at start-up, so the app starts and answers while either is down;
    connections are made on first use and made again once a server is back. A URL that
    cannot work counts as a server that is down.
    """

    def __init__(
        self, database_url: str, redis_url: str, *, pool_mode: db.PoolMode = "session"
    ) -> None:
        self._database_url = database_url
        self._pool_mode: db.PoolMode = pool_mode
        self._database_url_problem = postgres_url_problem(database_url)
        self._pool: asyncpg.Pool | None = None
        # A click waits for Redis: it fails at once rather than retry.
        self._queue = queue.LazyQueue(redis_url)

    async def open(self) -> None:
        """Create the connection pool (min_size=0: it connects on the first query)."""
        self._pool = await open_pool(
            self._database_url, query_timeout=QUERY_TIMEOUT, pool_mode=self._pool_mode
        )

    async def close(self) -> None:
        """Close whatever was opened."""
        await self._queue.close()
        if self._pool is not None:
            await self._pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy[Any]]:
        """A pooled connection; raises one of `DB_ERRORS` when Postgres is unavailable."""
        if self._pool is None:
            raise UnusableUrl(f"DATABASE_URL: {self._database_url_problem or 'not opened'}")
        async with self._pool.acquire(timeout=CONNECT_TIMEOUT) as conn:
            yield conn

    @asynccontextmanager
    async def _redis(self) -> AsyncIterator[ArqRedis]:
        """Redis for one operation of at most QUEUE_TIMEOUT; raises `QueueUnavailable`
        when it cannot answer."""
        try:
            async with asyncio.timeout(QUEUE_TIMEOUT):
                yield await self._queue.get()
        except queue.ERRORS as e:
            raise QueueUnavailable(type(e).__name__) from e

    async def queue_opt_out(
        self, claims: tokens.TokenClaims, token: str, source: str, *, job_id: str
    ) -> bool:
        """Hold a click in Redis where the send-time check reads it, then leave it to the
        `record_opt_out` job (a no-op if one with `job_id` is queued); False, nothing done,
        when that Redis would not keep it across a restart. Raises `QueueUnavailable` when
        Redis cannot answer."""
        async with self._redis() as redis:
            if not await held_optouts.durable(redis):
                return False
            await held_optouts.hold(redis, claims)
            await queue.enqueue_opt_out(redis, token, source, job_id=job_id)
        return True

    async def enqueue_feedback(self, report: dict[str, Any], *, job_id: str) -> None:
        """Leave a provider's feedback to the `record_feedback` job (a no-op while one with
        `job_id` is queued); raises `QueueUnavailable` when Redis cannot take it."""
        async with self._redis() as redis:
            await queue.enqueue_feedback(redis, report, job_id=job_id)

    async def remember(self, key: str, *, seconds: int) -> bool:
        """Set `key` in Redis for `seconds` unless it is set (SET NX EX); whether it was
        not. Raises `QueueUnavailable` when Redis cannot answer."""
        async with self._redis() as redis:
            return bool(await redis.set(key, b"1", nx=True, ex=seconds))

    async def forget(self, key: str) -> None:
        """Delete `key` from Redis; raises `QueueUnavailable` when Redis cannot answer."""
        async with self._redis() as redis:
            await redis.delete(key)

    async def database_problem(self) -> str | None:
        """None when Postgres answers now, else why not."""
        try:
            async with self.connection() as conn:
                await db.ping(conn)
        except DB_ERRORS as e:
            return _reason(e)
        return None

    async def queue_problem(self) -> str | None:
        """None when Redis answers now, else why not."""
        try:
            async with self._redis() as redis:
                await redis.ping()
        except QueueUnavailable as e:
            return _reason(e.__cause__ or e)
        return None


def _reason(error: BaseException) -> str:
    # The error's class says enough to an operator; its text may name hosts and users,
    # which a public endpoint does not show.
    return str(error) if isinstance(error, UnusableUrl) else type(error).__name__


@dataclass(frozen=True)
class WebContext:
    """What the handlers need, carried in Starlette's lifespan state."""

    keys: list[bytes]
    renderer: pages.Renderer
    backends: Backends
    hash_key: bytes = b""  # ADDRESS_HASH_KEY: keys the survey references
    completion_key: bytes | None = None  # COMPLETION_WEBHOOK_SECRET's key; None: 404
