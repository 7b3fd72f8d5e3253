"""The arq connection: JSON job encoding and enqueue helpers shared by CLI, web and jobs."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

import orjson
import redis.asyncio
import redis.exceptions
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job as ArqJob
from arq.jobs import JobStatus
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff

from worker import redis_url
from worker.errors import ConfigError, UnusableUrl
from worker.redis_url import RedisTarget
from worker.settings import redis_url_problem

# What an unreachable or failing Redis raises.
ERRORS = (OSError, redis.exceptions.RedisError)
# While a campaign's redrive shows running, at most one more redrive of it per this many
# seconds (see `enqueue_launch`).
REDRIVE_AGAIN_SECONDS = 60
# Backoff 0.2, 0.4, 0.8, 1.6 s, then 2 s a try: about 30 s in all.
RIDE_OUT_RETRIES = 18
# Seconds to open a connection to Redis or a Sentinel.
CONNECT_TIMEOUT = 2


def serialize(value: dict[str, Any]) -> bytes:
    """Jobs are plain JSON: ids in, small dicts out (never pickle)."""
    return orjson.dumps(value)


def deserialize(data: bytes) -> dict[str, Any]:
    """The inverse of `serialize`."""
    value: dict[str, Any] = orjson.loads(data)
    return value


def redis_settings(url: str, *, retries: int = 1, ride_out: bool = False) -> RedisSettings:
    """arq's settings for the Redis at `url` (read by `worker.redis_url`), failing fast when
    it is down. The connections themselves are made by `connect`, which arq's own
    `create_pool` cannot replace for Sentinels with a password or a CA file.

    With `ride_out` (the worker) a command that loses its connection is tried again
    for about half a minute, so a Redis restart does not end the worker's jobs or the worker.
    """
    target = redis_url.parse(url)
    settings = RedisSettings(
        host=list(target.sentinels) if target.sentinels else target.host,
        port=target.port,
        unix_socket_path=target.socket_path,
        database=target.database,
        username=target.username,
        password=target.password,
        ssl=target.tls,
        ssl_ca_certs=None if target.ca_file is None else str(target.ca_file),
        sentinel=bool(target.sentinels),
        sentinel_master=target.sentinel_master or "mymaster",
    )
    settings.conn_retries = retries
    settings.conn_timeout = CONNECT_TIMEOUT
    if ride_out:
        settings.retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), RIDE_OUT_RETRIES)
        settings.retry_on_error = [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    return settings


class SentinelProblem(ConfigError, redis.exceptions.ConnectionError):
    """The Sentinels refuse REDIS_SENTINEL_PASSWORD or know no REDIS_SENTINEL_MASTER: a
    setting to fix, and, to a process that rides out Redis errors, a Redis that is down."""


def sentinel_client(target: RedisTarget) -> Sentinel:
    """A client of the target's Sentinels; its connections to the primary find it anew
    at each connect, so a failover needs no restart."""
    return Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs={
            "password": target.sentinel_password,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": CONNECT_TIMEOUT,
        },
    )


async def primary_address(target: RedisTarget) -> tuple[str, int]:
    """The address of the primary the target's Sentinels name. SentinelProblem naming the
    setting when no Sentinel takes the password (REDIS_SENTINEL_PASSWORD) or none knows
    the name (REDIS_SENTINEL_MASTER); redis-py's ConnectionError when none answers."""
    master = target.sentinel_master or ""
    unreachable: list[str] = []
    refused = unknown = False
    for host, port in target.sentinels:
        client = redis.asyncio.Redis(
            host=host,
            port=port,
            password=target.sentinel_password,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=CONNECT_TIMEOUT,
        )
        try:
            found = await client.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "get-master-addr-by-name", master
            )
        except redis.exceptions.AuthenticationError:
            refused = True
            continue
        except redis.exceptions.ResponseError as e:
            if str(e).startswith(("NOAUTH", "WRONGPASS")) or "password" in str(e):
                refused = True
                continue
            raise
        except ERRORS as e:
            unreachable.append(f"{host}:{port}: {e or type(e).__name__}")
            continue
        finally:
            await client.aclose()
        if found:
            return found[0].decode(), int(found[1])
        unknown = True
    if refused:
        raise SentinelProblem(
            "REDIS_SENTINEL_PASSWORD: the Sentinels refuse it"
            if target.sentinel_password
            else "REDIS_SENTINEL_PASSWORD: the Sentinels ask for a password"
        )
    if unknown:
        raise SentinelProblem(
            f"REDIS_SENTINEL_MASTER: no Sentinel knows a primary named {master!r}"
        )
    raise redis.exceptions.ConnectionError(
        "REDIS_SENTINELS: no Sentinel answers (" + "; ".join(unreachable) + ")"
    )


async def connect(url: str, *, retries: int = 1, ride_out: bool = False) -> ArqRedis:
    """An arq Redis pool on the Redis at `url` (directly or through its Sentinels) that
    encodes jobs as JSON; `retries` more tries a second apart when it does not answer."""
    settings = redis_settings(url, retries=retries, ride_out=ride_out)
    target = redis_url.parse(url)
    options: dict[str, Any] = {
        **target.client_options(),
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "retry": settings.retry,
        "retry_on_error": settings.retry_on_error,
    }
    for attempt in range(retries + 1):
        if target.sentinels:
            pool = cast(
                ArqRedis,
                sentinel_client(target).master_for(
                    target.sentinel_master or "", redis_class=ArqRedis, **options
                ),
            )
        else:
            pool = ArqRedis(
                host=target.host,
                port=target.port,
                unix_socket_path=target.socket_path,
                **options,
            )
        pool.job_serializer = serialize
        pool.job_deserializer = deserialize
        try:
            if target.sentinels:
                # Asked first for its errors: redis-py's own would not say which setting.
                await primary_address(target)
            await pool.ping()
        except ERRORS:
            await pool.aclose()
            if attempt == retries:
                raise
            await asyncio.sleep(1)
        else:
            return pool
    raise AssertionError("unreachable")


async def check(url: str, *, timeout: float) -> None:
    """Return once the Redis at `url` answers a PING; raise one of `ERRORS` if it does not
    within `timeout` seconds (SentinelProblem for Sentinels that refuse or do not know it)."""
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


async def enqueue_launch(
    redis: ArqRedis, campaign_id: int, *, at: datetime | None = None, redrive: bool = False
) -> None:
    """Ask the workers to start sending a campaign (idempotent: the ledger decides), at
    `at` for a campaign scheduled to start then.

    A `redrive` (reconcile found the campaign idle) is a no-op while another redrive of it
    is queued (launch_campaign keeps no result): a busy queue makes every campaign look
    idle at every pass, and each redrive would queue more slices behind the ones already
    waiting, so the backlog fed itself (a 30-minute fault soak queued 118,000 jobs). A
    redrive found running may be on a worker that was killed while it ran, which arq
    counts as running for its whole in-progress timeout (minutes): then one more goes
    under an id of its own for the minute (a launch is idempotent; the ledger decides).
    """
    job_id = None
    if redrive:
        job_id = f"redrive:{campaign_id}"
        if await ArqJob(job_id, redis).status() is JobStatus.in_progress:
            job_id = f"{job_id}:{int(time.time() // REDRIVE_AGAIN_SECONDS)}"
    await redis.enqueue_job(Job.LAUNCH_CAMPAIGN, campaign_id, _defer_until=at, _job_id=job_id)


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
