"""Reconcile's redrive of an idle campaign is one queued job per campaign, however often
reconcile finds it idle: a busy queue makes every campaign look idle at every pass, and a
redrive per pass fed the backlog it waited behind; and a redrive a killed worker left
running does not hold the campaign for arq's in-progress timeout (real Redis, arq's
queue)."""

from __future__ import annotations

from arq.constants import default_queue_name, in_progress_key_prefix

from tests.support.pipeline import run_workers
from worker import queue
from worker.settings import Settings


async def test_a_campaign_is_redriven_once_while_its_redrive_waits(redis_url: str) -> None:
    redis = await queue.connect(redis_url)
    try:
        await redis.flushdb()
        for _ in range(5):
            await queue.enqueue_launch(redis, 7, redrive=True)
            await queue.enqueue_launch(redis, 8, redrive=True)
        assert await redis.zcard(default_queue_name) == 2
        # An operator's launch or resume is never swallowed by a waiting redrive.
        await queue.enqueue_launch(redis, 7)
        await queue.enqueue_launch(redis, 7)
        assert await redis.zcard(default_queue_name) == 4
    finally:
        await redis.aclose()


async def test_a_campaign_is_redriven_again_once_its_redrive_has_run(settings: Settings) -> None:
    redis = await queue.connect(settings.redis_url or "")
    try:
        await redis.flushdb()
        await queue.enqueue_launch(redis, 7, redrive=True)
        # A real worker runs the redrive (the campaign does not exist: it ends at once).
        await run_workers(settings)
        await queue.enqueue_launch(redis, 7, redrive=True)
        assert await redis.zcard(default_queue_name) == 1
    finally:
        await redis.aclose()


async def test_a_redrive_left_running_by_a_killed_worker_does_not_hold_the_campaign(
    redis_url: str,
) -> None:
    redis = await queue.connect(redis_url)
    try:
        await redis.flushdb()
        await queue.enqueue_launch(redis, 7, redrive=True)
        # What a worker killed while it ran the redrive leaves: arq's in-progress mark,
        # which holds for the worker's whole in-progress timeout.
        await redis.set(in_progress_key_prefix + "redrive:7", b"1", px=310_000)
        await queue.enqueue_launch(redis, 7, redrive=True)
        queued = [j.decode() for j in await redis.zrange(default_queue_name, 0, -1)]
        assert queued[0] == "redrive:7" and len(queued) == 2
        assert queued[1].startswith("redrive:7:")
    finally:
        await redis.aclose()
