"""Sampling while the campaign runs: the workers' peak RSS and Redis's memory."""

from __future__ import annotations

import asyncio

import redis.asyncio

from bench import procfs

INTERVAL = 0.2


class Monitor:
    """The highest worker VmHWM and Redis `used_memory` seen so far, in bytes."""

    def __init__(self, worker_pids: list[int], redis_client: redis.asyncio.Redis) -> None:
        self.worker_pids = worker_pids
        self.redis = redis_client
        self.worker_peak_rss = 0
        self.redis_peak = 0

    async def redis_memory(self) -> int:
        """Redis's `used_memory` right now."""
        info = await self.redis.info("memory")
        return int(info["used_memory"])

    async def sample(self) -> None:
        """Take one sample of every figure."""
        for pid in self.worker_pids:
            self.worker_peak_rss = max(self.worker_peak_rss, procfs.peak_rss(pid) or 0)
        self.redis_peak = max(self.redis_peak, await self.redis_memory())

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            await self.sample()
            await asyncio.sleep(INTERVAL)
