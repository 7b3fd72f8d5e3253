"""A send rate shared by every worker process, counted in Redis.

Each one-second window has a counter; a worker takes permits for a whole chunk with one
INCRBY and waits for the next window for those it did not get. Workers on many machines
therefore send at most `SEND_RATE` messages per second in total; a relay's
`SMTP_RELAY_<NAME>_RATE` is counted the same way under the relay's own keys.
"""

from __future__ import annotations

import asyncio
import math
import time

from redis.asyncio import Redis

KEY_PREFIX = "survey-worker:rate:"


def window_length(rate: float) -> int:
    """Seconds per counting window: one, or longer for rates below one per second."""
    return max(1, math.ceil(1 / rate))


def granted(rate: float, asked: int, total_after: int) -> int:
    """How many of `asked` permits fit in a window whose counter is now `total_after`."""
    allowance = math.floor(rate * window_length(rate))
    return max(0, min(asked, allowance - (total_after - asked)))


class RateLimiter:
    """Blocks until the caller may send; `rate` 0 means no limit. `scope` names a rate of
    its own (a relay's), counted apart from the others."""

    def __init__(self, redis: Redis, rate: float, scope: str = "") -> None:
        self._redis = redis
        self._rate = rate
        self._prefix = f"{KEY_PREFIX}{scope}:" if scope else KEY_PREFIX

    async def acquire(self, count: int) -> None:
        """Wait until `count` messages may be sent."""
        if self._rate <= 0:
            return
        length = window_length(self._rate)
        remaining = count
        while remaining:
            now = time.time()
            window = int(now // length)
            key = f"{self._prefix}{window}"
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incrby(key, remaining)
                pipe.expire(key, length * 2 + 1)
                total, _ = await pipe.execute()
            remaining -= granted(self._rate, remaining, int(total))
            if remaining:
                await asyncio.sleep((window + 1) * length - now)
