"""Worker crashes and restarts, Redis lost, Postgres down: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import asyncpg
import redis.asyncio

from tests.faults.harness import (
    WorkerProcess,
    campaign_status,
    ledger_rows,
    received_at_least,
    wait_until,
)
from tests.support.pipeline import add_client, csv_of, launch, received_by
from tests.support.smtp import RecordingHandler
from worker.dev import embedded
from worker.settings import Settings

SMTP = tuple[RecordingHandler, int]
Spawn = Callable[[Settings], WorkerProcess]
EMAILS = [f"person{i:03d}@example.com" for i in range(100)]
DATA_DIR = Path(__file__).resolve().parents[2] / ".data" / "test"


async def start_campaign(pg: asyncpg.Pool, settings: Settings) -> int:
    await add_client(pg, "acme")
    return (await launch(pg, settings, csv_of(*EMAILS))).campaign_id


async def completed(settings: Settings, campaign_id: int, timeout: float = 90) -> None:
    assert settings.database_url is not None
    url = settings.database_url

    async def check() -> bool:
        return await campaign_status(url, campaign_id) == "completed"

    await wait_until(check, timeout=timeout, what=f"campaign {campaign_id} to complete")


async def assert_each_sent_once(
    settings: Settings, handler: RecordingHandler, campaign_id: int
) -> dict[str, int]:
    """Every address sent exactly once, except `unknown` ones (at most twice)."""
    assert settings.database_url is not None
    rows = await ledger_rows(settings.database_url, campaign_id)
    got = received_by(handler.messages)
    states: dict[str, int] = {}
    for address, row in rows.items():
        states[row["state"]] = states.get(row["state"], 0) + 1
        if row["state"] == "unknown":
            assert got.get(address, 0) <= 2, address
        else:
            assert row["state"] == "sent", (address, row["state"])
            assert got.get(address) == 1, address
    assert "sending" not in states
    return states


async def under_way(
    pg: asyncpg.Pool, fast: Settings, handler: RecordingHandler, spawn: Spawn
) -> tuple[int, WorkerProcess]:
    """A campaign on a slow-ish server with one worker that has sent 20 messages."""
    handler.data_delay = 0.02
    campaign_id = await start_campaign(pg, fast)
    worker = spawn(fast)
    await received_at_least(handler, 20)
    return campaign_id, worker


async def finishes_once_each(
    fast: Settings, handler: RecordingHandler, campaign_id: int
) -> dict[str, int]:
    await completed(fast, campaign_id)
    return await assert_each_sent_once(fast, handler, campaign_id)


async def test_kill_9_mid_campaign_then_another_worker_finishes(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    handler = smtp[0]
    campaign_id, first = await under_way(pg, fast, handler, spawn)
    first.kill()
    spawn(fast)
    states = await finishes_once_each(fast, handler, campaign_id)
    assert states.get("unknown", 0) <= fast.smtp_connections


async def test_sigterm_exits_cleanly_and_the_next_worker_finishes(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    handler = smtp[0]
    campaign_id, first = await under_way(pg, fast, handler, spawn)
    assert await first.terminate() == 0, first.output()
    assert fast.database_url is not None
    rows = await ledger_rows(fast.database_url, campaign_id)
    assert not {r["state"] for r in rows.values()} & {"unknown", "sending"}
    spawn(fast)
    states = await finishes_once_each(fast, handler, campaign_id)
    assert states == {"sent": len(EMAILS)}


async def test_redis_flushed_mid_campaign_completes_through_reconcile(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    handler = smtp[0]
    campaign_id, _ = await under_way(pg, fast, handler, spawn)
    assert fast.redis_url is not None
    client = redis.asyncio.Redis.from_url(fast.redis_url)
    await client.flushdb()
    await client.aclose()
    states = await finishes_once_each(fast, handler, campaign_id)
    assert states == {"sent": len(EMAILS)}


async def test_redis_restarted_mid_campaign_completes(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    handler = smtp[0]
    campaign_id, _ = await under_way(pg, fast, handler, spawn)
    server = embedded.EmbeddedRedis(DATA_DIR)
    port = server.running_port()
    assert port is not None
    server.stop()
    server.start(port)
    states = await finishes_once_each(fast, handler, campaign_id)
    assert states == {"sent": len(EMAILS)}


async def test_postgres_stopped_mid_campaign_sends_nothing_until_it_returns(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    handler = smtp[0]
    campaign_id, _ = await under_way(pg, fast, handler, spawn)
    await pg.close()
    server = embedded.EmbeddedPostgres(DATA_DIR)
    port = server.running_port()
    assert port is not None
    server.stop()
    at_stop = len(handler.messages)
    await asyncio.sleep(3)
    # Only what was already on the wire (one chunk) may arrive while Postgres is down.
    assert len(handler.messages) <= at_stop + fast.chunk_size
    server.start(port)
    await finishes_once_each(fast, handler, campaign_id)
