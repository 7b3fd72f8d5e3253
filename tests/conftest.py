"""Fixtures on real services: Postgres and Redis (embedded unless TEST_DATABASE_URL and
TEST_REDIS_URL name servers), and a real aiosmtpd SMTP server per test."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio

from tests.support.admin import admin, with_database
from tests.support.settings import make_settings
from tests.support.smtp import RecordingHandler, start_smtp_server
from worker import db
from worker.dev import embedded
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
# One template per pytest process: two test runs may share the embedded cluster.
TEMPLATE_DB = f"survey_test_template_{os.getpid()}"


@pytest.fixture(scope="session")
def services() -> Iterator[embedded.ServiceUrls]:
    """Postgres and Redis for the whole test session, with a migrated template database."""
    with embedded.services(
        database_url=os.environ.get("TEST_DATABASE_URL"),
        redis_url=os.environ.get("TEST_REDIS_URL"),
        data_dir=ROOT / ".data" / "test",
    ) as urls:

        async def make_template() -> None:
            await admin(
                urls.database_url,
                f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)",
                f"CREATE DATABASE {TEMPLATE_DB}",
            )
            conn = await asyncpg.connect(with_database(urls.database_url, TEMPLATE_DB))
            try:
                await db.migrate(conn)
            finally:
                await conn.close()

        async def drop_template() -> None:
            await admin(urls.database_url, f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")

        asyncio.run(make_template())
        yield urls
        asyncio.run(drop_template())


@pytest.fixture
async def database_url(services: embedded.ServiceUrls) -> AsyncIterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    await admin(services.database_url, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    yield with_database(services.database_url, name)
    await admin(services.database_url, f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test's database."""
    pool = await db.create_pool(database_url, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def redis_database(services: embedded.ServiceUrls) -> Iterator[int]:
    """A Redis database number of this pytest process's own: two runs may share the
    embedded server, and one's FLUSHDB must not empty the other's queue."""
    owner = f"pytest:{os.getpid()}"

    async def claim() -> int:
        client = redis.asyncio.from_url(services.redis_url)
        try:
            for number in range(1, 16):
                if await client.set(f"test-database:{number}", owner, nx=True, ex=6 * 3600):
                    return number
        finally:
            await client.aclose()
        raise RuntimeError("all 15 test Redis databases are taken by other test runs")

    async def release(number: int) -> None:
        client = redis.asyncio.from_url(services.redis_url)
        try:
            if await client.get(f"test-database:{number}") == owner.encode():
                await client.delete(f"test-database:{number}")
        finally:
            await client.aclose()

    number = asyncio.run(claim())
    yield number
    asyncio.run(release(number))


@pytest.fixture
async def redis_url(services: embedded.ServiceUrls, redis_database: int) -> AsyncIterator[str]:
    """The test Redis, flushed before the test."""
    url = f"{services.redis_url.rpartition('/')[0]}/{redis_database}"
    client = redis.asyncio.from_url(url)
    await client.flushdb()
    await client.aclose()
    yield url


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[RecordingHandler, int]]:
    """A real SMTP server on a free port that records what it accepts."""
    handler = RecordingHandler()
    async with start_smtp_server(handler) as port:
        yield handler, port


@pytest.fixture
def settings(database_url: str, redis_url: str, smtp: tuple[RecordingHandler, int]) -> Settings:
    """Settings for a test: its own database, the test Redis and SMTP server."""
    return make_settings(
        database_url,
        redis_url,
        "127.0.0.1",
        smtp[1],
        # Campaigns of a few slices already run through the window of slices in flight.
        slices_in_flight=2,
    )
