"""A Redis failover in the middle of a campaign, with real servers this test starts: a
primary, its replica and a Sentinel (Debian's `redis-server`). The primary is killed
(SIGKILL) while a worker sends; the Sentinel promotes the replica; the worker, its send
journal and the commands find the new primary through REDIS_SENTINELS by themselves.
The ledger is the truth: each invitation is sent at most once, only those on the wire
at the kill may be left `unknown`, and a job the old primary took with it is found again
by `reconcile`."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest
import redis.asyncio

from tests.faults.harness import wait_until
from tests.support.campaign_cli import add_and_launch
from tests.support.commands import running
from tests.support.pipeline import assert_once_after_a_failover
from tests.support.redis_servers import BINARY, redis_server, sentinel
from tests.support.smtp import RecordingHandler
from tests.support.web import cli
from worker.settings import Settings

pytestmark = pytest.mark.skipif(not BINARY.exists(), reason="Debian's redis-server is missing")

PASSWORD = "fail/over:p@ss+="
MASTER = "survey"
PEOPLE = [f"person{n:03}@example.com" for n in range(300)]


async def role(port: int) -> str:
    client = redis.asyncio.Redis(port=port, password=PASSWORD)
    try:
        info = await client.info("replication")
        return str(info["role"])
    finally:
        await client.aclose()


async def test_the_campaign_completes_once_after_the_primary_is_killed(
    settings: Settings, pg: asyncpg.Pool, smtp: tuple[RecordingHandler, int], tmp_path: Path
) -> None:
    handler = smtp[0]
    # Slow enough that the kill lands in the middle of the campaign.
    handler.data_delay = 0.03
    with (
        redis_server(tmp_path / "primary", password=PASSWORD) as primary,
        redis_server(tmp_path / "replica", password=PASSWORD, replica_of=primary) as replica,
        sentinel(tmp_path / "sentinel", master_port=primary, master=MASTER, auth=PASSWORD) as s,
    ):
        env = {
            "REDIS_URL": f"redis://:{quote(PASSWORD, safe='')}@primary.invalid:1/0",
            "REDIS_SENTINELS": f"127.0.0.1:{s}",
            "REDIS_SENTINEL_MASTER": MASTER,
            "RECONCILE_INTERVAL_SECONDS": "2",
        }
        campaign_id = await add_and_launch(settings, PEOPLE, tmp_path, env=env)

        async with running(settings, "worker", env=env):

            async def some_sent() -> bool:
                return len(handler.messages) >= 30

            await wait_until(some_sent, timeout=60, what="the first messages")
            client = redis.asyncio.Redis(port=primary, password=PASSWORD)
            pid = int((await client.info("server"))["process_id"])
            await client.aclose()
            os.kill(pid, signal.SIGKILL)
            sent_before = len(handler.messages)
            assert sent_before < len(PEOPLE), "the campaign ended before the kill"

            async def promoted() -> bool:
                return await role(replica) == "master"

            await wait_until(promoted, timeout=60, what="the Sentinel to promote the replica")

            async def completed() -> bool:
                shown = await cli(settings, "status", str(campaign_id), "--json", env=env)
                assert shown.code == 0, shown.stderr
                return bool(json.loads(shown.stdout)["status"] == "completed")

            await wait_until(completed, timeout=180, what="the campaign to complete")

    rows = await pg.fetch("SELECT state, count(*) AS n FROM invitations GROUP BY state")
    states = {row["state"]: row["n"] for row in rows}
    # Only messages on the wire at the kill may be unknown (SMTP_CONNECTIONS at once).
    assert_once_after_a_failover(states, handler.messages, len(PEOPLE), settings.smtp_connections)
