"""The arq connection: JSON job encoding and enqueue helpers shared by CLI, web and jobs."""

from __future__ import annotations

import asyncio
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson
import redis.exceptions
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from worker.errors import UnusableUrl
from worker.settings import redis_url_problem

# What an unreachable or failing Redis raises.
ERRORS = (OSError, redis.exceptions.RedisError)
# Backoff 0.2, 0.4, 0.8, 1.6 s, then 2 s a try: about 30 s in all.
RIDE_OUT_RETRIES = 18


def serialize(value: dict[str, Any]) -> bytes:
    """Jobs are plain JSON: ids in, small dicts out (never pickle)."""
    return orjson.dumps(value)


def deserialize(data: bytes) -> dict[str, Any]:
    """The inverse of `serialize`."""
    value: dict[str, Any] = orjson.loads(data)
    return value


def redis_settings(url: str, *, retries: int = 1, ride_out: bool = False) -> RedisSettings:
    """arq's settings for the Redis at `url`, failing fast when it is down.

    With `ride_out` (the worker) a command that loses its connection is tried again
    for about half a minute, so a Redis restart does not end the worker's jobs or the worker.
    """
    settings = RedisSettings.from_dsn(url)
    settings.conn_retries = retries
    settings.conn_timeout = 2
    if ride_out:
        settings.retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), RIDE_OUT_RETRIES)
        settings.retry_on_error = [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    return settings


async def connect(url: str, *, retries: int = 1) -> ArqRedis:
    """An arq Redis pool that encodes jobs as JSON."""
    return await create_pool(
        redis_settings(url, retries=retries),
        job_serializer=serialize,
        job_deserializer=deserialize,
    )


async def check(url: str, *, timeout: float) -> None:
    """Return once the Redis at `url` answers a PING; raise one of `ERRORS` if it does not
    within `timeout` seconds."""
    async with asyncio.timeout(timeout):
        redis = await connect(url, retries=0)
        await redis.aclose()


class LazyQueue:
    """The arq pool of a process that must start and answer while Redis is down (the web
    app, the inbound SMTP server): it connects on first use, failing at once rather than
    retrying, and its connections are made again once Redis is back."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._url_problem = redis_url_problem(url)
        self._redis: ArqRedis | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> ArqRedis:
        """The pool; raises `UnusableUrl` for a REDIS_URL that cannot work, or one of
        `ERRORS` when Redis does not answer."""
        async with self._lock:
            if self._url_problem:
                raise UnusableUrl(f"REDIS_URL: {self._url_problem}")
            if self._redis is None:
                self._redis = await connect(self._url, retries=0)
            return self._redis

    async def close(self) -> None:
        """Close the pool if it was opened."""
        if self._redis is not None:
            await self._redis.aclose()


class Job(StrEnum):
    """The jobs' names, bound once: platforms that enqueue directly rely on them (see
    docs/architecture.md, "Jobs"). The worker registers each function under its name; the
    helpers below are the only way this package enqueues them."""

    LAUNCH_CAMPAIGN = "launch_campaign"
    SEND_BATCH = "send_batch"
    SEND_INVITATION = "send_invitation"
    RECORD_OPT_OUT = "record_opt_out"
    RECORD_FEEDBACK = "record_feedback"
    RECONCILE = "reconcile"
    PURGE = "purge"


async def enqueue_launch(redis: ArqRedis, campaign_id: int) -> None:
    """Ask the workers to start sending a campaign (idempotent: the ledger decides)."""
    await redis.enqueue_job(Job.LAUNCH_CAMPAIGN, campaign_id)


async def enqueue_slices(redis: ArqRedis, campaign_id: int, ranges: list[tuple[int, int]]) -> None:
    """One `send_batch` job per id range `[first, last]` of the campaign."""
    for first, last in ranges:
        await redis.enqueue_job(Job.SEND_BATCH, campaign_id, first, last)


async def enqueue_slice_retry(
    redis: ArqRedis, campaign_id: int, first: int, last: int, *, at: datetime
) -> None:
    """Run the slice `[first, last]` again at `at`, when its deferred invitations are due."""
    await redis.enqueue_job(Job.SEND_BATCH, campaign_id, first, last, _defer_until=at)


async def enqueue_opt_out(redis: ArqRedis, token: str, source: str, *, job_id: str) -> None:
    """Leave an opt-out to the `record_opt_out` job (a no-op while one with `job_id` is
    queued)."""
    await redis.enqueue_job(Job.RECORD_OPT_OUT, token, source, _job_id=job_id)


async def enqueue_feedback(redis: ArqRedis, report: dict[str, Any], *, job_id: str) -> None:
    """Leave a report to the `record_feedback` job: `{"message": <base64 of the raw
    message>, "verp": <the address it was sent to>}` from `survey-worker inbound`, or
    `{"events": [feedback.Event.as_job(), ...]}` from a provider's webhook. A no-op while
    a job with `job_id` is queued; raises one of `ERRORS` when Redis did not take it."""
    await redis.enqueue_job(Job.RECORD_FEEDBACK, report, _job_id=job_id)
