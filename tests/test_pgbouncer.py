"""Through a real PgBouncer (Debian's): DATABASE_POOL_MODE=transaction in front of a
PgBouncer in transaction pooling, and the default session mode in front of one in session
pooling with its default `ignore_startup_parameters`. The installed commands, the worker,
the web app's unsubscribe POST and the client API all work through it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.faults.harness import wait_until
from tests.support.admin import admin, with_database
from tests.support.pgbouncer import BINARY, pgbouncer
from tests.support.pipeline import csv_of, received_by
from tests.support.smtp import RecordingHandler
from tests.support.web import cli, launch_args, serving, unsubscribe_link
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
    added = await cli(
        settings, "client", "add", "acme", "--name", "Acme", "--sender", "surveys@acme.example"
    )
    assert added.code == 0, added.stderr
    recipients = tmp_path / "people.csv"
    recipients.write_text(csv_of(*PEOPLE))
    launched = await cli(settings, *launch_args(recipients), "--json")
    assert launched.code == 0, launched.stderr
    campaign_id: int = json.loads(launched.stdout)["campaign_id"]

    async def completed() -> bool:
        ran = await cli(settings, "worker", "--burst")
        assert ran.code == 0, ran.stderr
        shown = await cli(settings, "status", str(campaign_id), "--json")
        assert shown.code == 0, shown.stderr
        return bool(json.loads(shown.stdout)["status"] == "completed")

    await wait_until(completed, timeout=120, what="the campaign to complete")
    return campaign_id


async def test_commands_worker_web_and_api_work_through_pgbouncer(
    bounced: Settings, pg: asyncpg.Pool, smtp: tuple[RecordingHandler, int], tmp_path: Path
) -> None:
    handler = smtp[0]
    campaign_id = await run_campaign(bounced, tmp_path)
    assert received_by(handler.messages) == {person: 1 for person in PEOPLE}

    key = await cli(bounced, "client", "key", "create", "acme", "--name", "pgbouncer")
    assert key.code == 0, key.stderr
    token = key.stdout.split()[-1]
    async with serving(bounced) as base, httpx.AsyncClient(base_url=base) as http:
        clicked = await http.post(
            unsubscribe_link(handler.messages[0]).replace("https://unsubscribe.test", base),
            data={"List-Unsubscribe": "One-Click"},
        )
        assert clicked.status_code == 200, clicked.text
        for _ in range(5):
            shown = await http.get(
                f"/v1/campaigns/{campaign_id}", headers={"Authorization": f"Bearer {token}"}
            )
            assert shown.status_code == 200, shown.text
    opted_out = await pg.fetchval("SELECT count(*) FROM client_opt_outs")
    assert opted_out == 1


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
