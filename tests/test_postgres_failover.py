"""A Postgres failover in the middle of a campaign, with real servers this test starts: a
primary and a streaming standby it commits to synchronously (the embedded Postgres
binaries). DATABASE_URL names both hosts with `target_session_attrs=read-write`. The
primary is stopped as if it crashed (`pg_ctl stop -m immediate`) while a worker sends,
and the standby is promoted: the worker, still running, reconnects to it by itself, and
the commands find it through the same URL. The ledger is the truth: each invitation is
sent at most once, and only those on the wire at the crash may be left `unknown`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg

from tests.faults.harness import wait_until
from tests.support.campaign_cli import add_and_launch
from tests.support.commands import running
from tests.support.pipeline import assert_once_after_a_failover
from tests.support.postgres_servers import primary, standby
from tests.support.smtp import RecordingHandler
from tests.support.web import cli
from worker import db
from worker.settings import Settings

PEOPLE = [f"person{n:03}@example.com" for n in range(300)]
FINAL_STATES = {"sent", "suppressed", "failed", "unknown"}


def url_of(*ports: int) -> str:
    """DATABASE_URL naming the servers on these ports, asking for the one that takes writes."""
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
    return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write"


async def test_the_campaign_completes_once_after_the_primary_is_lost(
    settings: Settings, smtp: tuple[RecordingHandler, int], tmp_path: Path
) -> None:
    handler = smtp[0]
    # Slow enough that the crash lands in the middle of the campaign.
    handler.data_delay = 0.03
    with primary() as first, standby(first) as second:
        url = url_of(first.port, second.port)
        both = settings.model_copy(update={"database_url": url})
        migrated = await cli(both, "migrate")
        assert migrated.code == 0, migrated.stderr
        env = {"RECONCILE_INTERVAL_SECONDS": "2"}
        campaign_id = await add_and_launch(both, PEOPLE, tmp_path, env=env)

        async with running(both, "worker", env=env):

            async def some_sent() -> bool:
                return len(handler.messages) >= 30

            await wait_until(some_sent, timeout=60, what="the first messages")
            await asyncio.to_thread(first.stop, "immediate")
            assert len(handler.messages) < len(PEOPLE), "the campaign ended before the crash"
            await asyncio.to_thread(second.promote)

            async def completed() -> bool:
                shown = await cli(both, "status", str(campaign_id), "--json")
                assert shown.code == 0, shown.stderr
                return bool(json.loads(shown.stdout)["status"] == "completed")

            await wait_until(completed, timeout=180, what="the campaign to complete")

        shown = await cli(both, "status", str(campaign_id), "--json")
        assert shown.code == 0, shown.stderr
        counts = json.loads(shown.stdout)["counts"]
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT state, count(*) AS n FROM invitations GROUP BY state")
            in_recovery = await conn.fetchval("SELECT pg_is_in_recovery()")
        finally:
            await conn.close()

    assert not in_recovery
    states = {row["state"]: row["n"] for row in rows}
    assert {state: n for state, n in counts.items() if n} == states
    assert set(states) <= FINAL_STATES, states
    # Only messages on the wire at the crash may be unknown (SMTP_CONNECTIONS at once).
    assert_once_after_a_failover(states, handler.messages, len(PEOPLE), settings.smtp_connections)


async def test_the_worker_commits_synchronously_while_a_standby_is_synchronous() -> None:
    # An outcome the primary acknowledged but never passed on would be lost with it; the
    # promoted standby has no synchronous standby of its own, and commits asynchronously.
    with primary() as first, standby(first) as second:
        pool = await db.create_pool(
            url_of(first.port, second.port), max_size=1, synchronous_commit=False
        )
        try:
            for _ in range(2):
                async with pool.acquire() as conn:
                    assert await conn.fetchval("SHOW synchronous_commit") == "on"
            await asyncio.to_thread(first.stop, "immediate")
            await asyncio.to_thread(second.promote)
            await pool.expire_connections()
            for _ in range(2):
                async with pool.acquire() as conn:
                    assert await conn.fetchval("SHOW synchronous_commit") == "off"
        finally:
            await pool.close()


async def test_a_url_whose_hosts_take_no_writes_stops_a_command_with_one_line(
    settings: Settings,
) -> None:
    with primary() as first, standby(first) as second:
        shown = await cli(
            settings.model_copy(update={"database_url": url_of(second.port)}), "status", "1"
        )
    assert shown.code == 1
    assert shown.stderr.strip().splitlines() == [
        f"Error: DATABASE_URL: cannot connect to Postgres at 127.0.0.1:{second.port}/postgres: "
        "None of the hosts match the target attribute requirement "
        "<SessionAttribute.read_write: 'read-write'>"
    ]
