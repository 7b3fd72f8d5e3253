"""Through a real PgBouncer (Debian's): DATABASE_POOL_MODE=transaction in front of a
PgBouncer in transaction pooling, and the default session mode in front of one in session
pooling with its default `ignore_startup_parameters`. The installed commands and the
worker work through it, and `migrate` of an empty database."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.faults.harness import wait_until
from tests.support.admin import admin, with_database
from tests.support.campaign_cli import add_and_launch
from tests.support.pgbouncer import BINARY, pgbouncer
from tests.support.pipeline import received_by
from tests.support.smtp import RecordingHandler
from tests.support.web import cli, serving, unsubscribe_link
from worker import db
from worker.settings import Settings

pytestmark = pytest.mark.skipif(not BINARY.exists(), reason="Debian's pgbouncer is not installed")

PEOPLE = [f"person{n}@example.com" for n in range(25)]


@pytest.fixture(params=["transaction", "session"])
def bounced(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Settings]:
    """The test's settings with DATABASE_URL through a PgBouncer pooling as the
    parameter says, and DATABASE_POOL_MODE set to match."""
    mode = request.param
    assert settings.database_url is not None
    with pgbouncer(settings.database_url, pool_mode=mode, pool_size=3) as url:
        yield settings.model_copy(update={"database_url": url, "database_pool_mode": mode})


async def run_campaign(settings: Settings, tmp_path: Path) -> int:
    """`client add`, `launch`, then `worker --burst` until `status` says completed."""
    campaign_id = await add_and_launch(settings, PEOPLE, tmp_path)

    async def completed() -> bool:
        ran = await cli(settings, "worker", "--burst")
        assert ran.code == 0, ran.stderr
        shown = await cli(settings, "status", str(campaign_id), "--json")
        assert shown.code == 0, shown.stderr
        return bool(json.loads(shown.stdout)["status"] == "completed")

    await wait_until(completed, timeout=120, what="the campaign to complete")
    return campaign_id


async def test_the_commands_and_the_worker_work_through_pgbouncer(
    bounced: Settings, smtp: tuple[RecordingHandler, int], tmp_path: Path
) -> None:
    await run_campaign(bounced, tmp_path)
    assert received_by(smtp[0].messages) == {person: 1 for person in PEOPLE}
    key = await cli(bounced, "client", "key", "create", "acme", "--name", "pgbouncer")
    assert key.code == 0, key.stderr


async def test_migrate_through_pgbouncer_in_transaction_pooling(
    services: object, database_url: str
) -> None:
    """An empty database migrated through PgBouncer: the migrations' advisory lock is a
    transaction's, so no statement of it lands on another server connection."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    await admin(database_url, f"CREATE DATABASE {name}")
    try:
        with pgbouncer(with_database(database_url, name), pool_mode="transaction") as url:
            conn = await db.connect(url, pool_mode="transaction")
            try:
                applied = await db.migrate(conn)
                assert applied and await db.migrate(conn) == []
            finally:
                await conn.close()
    finally:
        await admin(database_url, f"DROP DATABASE {name} WITH (FORCE)")


async def test_the_worker_pool_commits_asynchronously_through_session_pooling(
    database_url: str,
) -> None:
    """No startup parameter (PgBouncer's default refuses it): `synchronous_commit` is set
    on each new connection and again after asyncpg's RESET ALL at each release."""
    with pgbouncer(database_url, pool_mode="session") as url:
        pool = await db.create_pool(url, max_size=1, synchronous_commit=False)
        try:
            for _ in range(3):
                async with pool.acquire() as conn:
                    assert await conn.fetchval("SHOW synchronous_commit") == "off"
                    await conn.execute("SET synchronous_commit TO on")
        finally:
            await pool.close()


# In session pooling each of the app's connections holds a server connection for good, so
# PgBouncer needs at least the app's pools' size; in transaction pooling 3 are enough.
@pytest.mark.parametrize(("mode", "server_connections"), [("transaction", 3), ("session", 40)])
async def test_the_web_app_and_the_api_work_through_pgbouncer(
    settings: Settings,
    pg: asyncpg.Pool,
    smtp: tuple[RecordingHandler, int],
    tmp_path: Path,
    mode: str,
    server_connections: int,
) -> None:
    assert settings.database_url is not None
    with pgbouncer(settings.database_url, pool_mode=mode, pool_size=server_connections) as url:
        bounced = settings.model_copy(update={"database_url": url, "database_pool_mode": mode})
        await _web_app_and_api(bounced, pg, smtp[0], tmp_path)


async def _web_app_and_api(
    bounced: Settings, pg: asyncpg.Pool, handler: RecordingHandler, tmp_path: Path
) -> None:
    campaign_id = await run_campaign(bounced, tmp_path)
    key = await cli(bounced, "client", "key", "create", "acme", "--name", "pgbouncer")
    assert key.code == 0, key.stderr
    token = key.stdout.split()[-1]
    async with serving(bounced) as base, httpx.AsyncClient(base_url=base) as http:
        clicked = await http.post(
            unsubscribe_link(handler.messages[0]).replace("https://unsubscribe.test", base),
            data={"List-Unsubscribe": "One-Click"},
        )
        assert clicked.status_code == 200, clicked.text
        # More requests at once than PgBouncer has server connections (3): the app's
        # connections take turns on them (503 DuplicatePreparedStatementError without
        # the pool mode).
        shown = await asyncio.gather(
            *(
                http.get(
                    f"/v1/campaigns/{campaign_id}", headers={"Authorization": f"Bearer {token}"}
                )
                for _ in range(30)
            )
        )
        assert {answer.status_code for answer in shown} == {200}, shown[0].text
    assert await pg.fetchval("SELECT count(*) FROM client_opt_outs") == 1
