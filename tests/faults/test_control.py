"""Pause, resume and cancel through the real CLI, and a send rate shared by two workers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg

from tests.faults.harness import (
    WorkerProcess,
    campaign_status,
    cli,
    ledger_rows,
    received_at_least,
    wait_until,
)
from tests.support.pipeline import add_client, csv_of, launch, received_by
from tests.support.smtp import RecordingHandler
from worker.settings import Settings

SMTP = tuple[RecordingHandler, int]
Spawn = Callable[[Settings], WorkerProcess]


async def ok(settings: Settings, *args: str) -> str:
    """Run a CLI command that must succeed; its output. In a thread: the test SMTP server
    shares this event loop and must keep answering the workers meanwhile."""
    done = await asyncio.to_thread(cli, settings, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def slow_campaign_under_way(
    pg: asyncpg.Pool, fast: Settings, handler: RecordingHandler, spawn: Spawn
) -> tuple[int, list[str]]:
    """60 invitations to a slow server, one worker, the first 8 delivered."""
    # Slow enough that the campaign is still sending when the command, a new process, runs.
    handler.data_delay = 0.3
    await add_client(pg, "acme")
    emails = [f"p{i:02d}@example.com" for i in range(60)]
    report = await launch(pg, fast, csv_of(*emails))
    spawn(fast)
    await received_at_least(handler, 8)
    return report.campaign_id, emails


async def test_pause_stops_sending_and_resume_finishes(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    handler = smtp[0]
    campaign_id, emails = await slow_campaign_under_way(pg, fast, handler, spawn)
    assert (await ok(fast, "pause", str(campaign_id))).endswith("paused")
    assert (await ok(fast, "pause", str(campaign_id))).endswith("(unchanged)")
    at_pause = len(handler.messages)
    await asyncio.sleep(1.5)
    # The chunk in flight may finish; nothing after it.
    assert len(handler.messages) <= at_pause + fast.chunk_size
    paused_count = len(handler.messages)
    await asyncio.sleep(1.0)
    assert len(handler.messages) == paused_count
    assert (await ok(fast, "resume", str(campaign_id))).endswith("running")
    assert fast.database_url is not None
    url = fast.database_url

    async def done() -> bool:
        return await campaign_status(url, campaign_id) == "completed"

    await wait_until(done, what="completion after resume")
    assert received_by(handler.messages) == dict.fromkeys(emails, 1)


async def test_cancel_marks_the_rest_cancelled_and_sends_nothing_more(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    handler = smtp[0]
    campaign_id, _ = await slow_campaign_under_way(pg, fast, handler, spawn)
    assert (await ok(fast, "cancel", str(campaign_id))).endswith("cancelled")
    at_cancel = len(handler.messages)
    await asyncio.sleep(1.5)
    assert len(handler.messages) <= at_cancel + fast.chunk_size
    assert (await ok(fast, "cancel", str(campaign_id))).endswith("(unchanged)")
    assert fast.database_url is not None
    ledger = await ledger_rows(fast.database_url, campaign_id)
    states = {r["state"] for r in ledger.values()}
    assert states <= {"sent", "cancelled"}
    sent = {a for a, r in ledger.items() if r["state"] == "sent"}
    assert set(received_by(handler.messages)) == sent
    assert await campaign_status(fast.database_url, campaign_id) == "cancelled"


async def test_two_workers_share_one_send_rate(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    handler = smtp[0]
    rate = 10
    settings = fast.model_copy(update={"send_rate": float(rate), "slice_size": 10})
    await add_client(pg, "acme")
    emails = [f"p{i:02d}@example.com" for i in range(60)]
    await launch(pg, settings, csv_of(*emails))
    spawn(settings)
    spawn(settings)
    await received_at_least(handler, len(emails))
    # At `rate` messages per one-second window in total, 60 messages span six windows:
    # at least four seconds from the first to the last even if the first window was
    # nearly over; two workers at `rate` each would need half that. A slow machine can
    # only make it longer.
    assert handler.arrivals[-1] - handler.arrivals[0] >= len(emails) / rate - 2
    assert received_by(handler.messages) == dict.fromkeys(emails, 1)
