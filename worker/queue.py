"""The arq connection: JSON job encoding and enqueue helpers shared by CLI, web and jobs."""

from __future__ import annotations

from typing import Any

import orjson
import redis.exceptions
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

# What an unreachable or failing Redis raises.
ERRORS = (OSError, redis.exceptions.RedisError)


def serialize(value: dict[str, Any]) -> bytes:
    """Jobs are plain JSON: ids in, small dicts out (never pickle)."""
    return orjson.dumps(value)


def deserialize(data: bytes) -> dict[str, Any]:
    """The inverse of `serialize`."""
    value: dict[str, Any] = orjson.loads(data)
    return value


def redis_settings(url: str, *, retries: int = 1) -> RedisSettings:
    """arq's settings for the Redis at `url`, failing fast when it is down."""
    settings = RedisSettings.from_dsn(url)
    settings.conn_retries = retries
    settings.conn_timeout = 2
    return settings


async def connect(url: str, *, retries: int = 1) -> ArqRedis:
    """An arq Redis pool that encodes jobs as JSON."""
    return await create_pool(
        redis_settings(url, retries=retries),
        job_serializer=serialize,
        job_deserializer=deserialize,
    )


async def enqueue_launch(redis: ArqRedis, campaign_id: int) -> None:
    """Ask the workers to start sending a campaign (idempotent: the ledger decides)."""
    await redis.enqueue_job("launch_campaign", campaign_id)
