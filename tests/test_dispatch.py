"""Slices in flight: a campaign's slices reach Redis a window at a time, on real Postgres,
Redis (arq) and SMTP."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import asyncpg
from arq.constants import default_queue_name

from tests.support.pipeline import add_client, csv_of, launch, make_worker, received_by
from tests.support.smtp import RecordingHandler
from worker import jobs, ledger, queue
from worker.settings import Settings

SMTP = tuple[RecordingHandler, int]


async def test_dispatch_hands_out_each_range_once_and_restart_begins_again(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    await add_client(pg, "acme")
    report = await launch(
        pg, settings, csv_of(*(f"p{i}@example.com" for i in range(35))), enqueue=False
    )
    ids = [r["id"] for r in await pg.fetch("SELECT id FROM invitations ORDER BY id")]

    async def next_range() -> list[tuple[int, int]]:
        async with pg.acquire() as conn:
            return await ledger.dispatch(
                conn, report.campaign_id, slice_size=10, slices=1, restart=False
            )

    taken = [r for rs in await asyncio.gather(*(next_range() for _ in range(5))) for r in rs]
    assert sorted(taken) == [
        (ids[0], ids[9]),
        (ids[10], ids[19]),
        (ids[20], ids[29]),
        (ids[30], ids[34]),
    ]

    await pg.execute("UPDATE invitations SET state = 'sent' WHERE id <= $1", ids[14])
    async with pg.acquire() as conn:
        again = await ledger.dispatch(
            conn, report.campaign_id, slice_size=10, slices=5, restart=True
        )
    assert again == [(ids[15], ids[24]), (ids[25], ids[34])]

    await pg.execute("UPDATE campaigns SET status = 'paused'")
    async with pg.acquire() as conn:
        assert (
            await ledger.dispatch(conn, report.campaign_id, slice_size=10, slices=5, restart=True)
            == []
        )


async def test_redis_holds_a_window_of_slices_and_every_recipient_gets_one_message(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    await add_client(pg, "acme")
    emails = [f"person{i}@example.com" for i in range(200)]
    report = await launch(pg, settings, csv_of(*emails), enqueue=False)
    assert settings.redis_url is not None
    redis = await queue.connect(settings.redis_url)
    ctx = {"redis": redis, "pool": pg, "settings": settings, "job_id": "test-launch"}
    assert await jobs.launch_campaign(cast(Any, ctx), report.campaign_id) == {"slices": 2}
    assert await redis.zcard(default_queue_name) == settings.slices_in_flight == 2

    worker = make_worker(settings)
    run = asyncio.create_task(worker.main())
    most = 0
    while not run.done():
        most = max(most, await redis.zcard(default_queue_name))
        await asyncio.sleep(0.01)
    await run
    await worker.close()
    ranges = [
        tuple(r.args[1:])
        for r in await redis.all_job_results()
        if r.function == "send_batch" and r.success
    ]
    await redis.aclose()

    # A finishing slice enqueues the next before arq removes it from the queue, and the
    # reconcile cron job shares the queue: never near the campaign's 20 slices.
    assert 0 < most <= 2 * settings.slices_in_flight + 1
    # 20 slices of 10, each enqueued once: by the launch or by the slice before it.
    assert len(ranges) == len(set(ranges)) == 20
    assert received_by(smtp[0].messages) == dict.fromkeys(emails, 1)
    status = await pg.fetchval("SELECT status FROM campaigns WHERE id = $1", report.campaign_id)
    assert status == "completed"
