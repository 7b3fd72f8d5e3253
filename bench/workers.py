"""The worker processes under test: started before t0, checked ready, stopped after."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench import processes, procfs
from bench.errors import BenchError
from bench.settings import worker_env
from worker.dev import embedded
from worker.settings import Settings

READY_TIMEOUT = 60.0


class WorkerStartFailed(BenchError):
    """A worker process exited or did not become ready."""


class Crew:
    """`survey-worker worker` processes, each logging to its own file."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.env = worker_env(settings, os.environ.get("PATH", os.defpath))
        self.log_dir = log_dir
        self.logs: list[Path] = []
        # Each worker serves its Prometheus metrics on a port of its own (METRICS_PORT).
        self.metrics_ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.stop_timeout = settings.smtp_timeout + 10

    def start(self, count: int) -> None:
        """Start `count` workers.

        Not `--burst`: a burst worker exits as soon as the queue is empty, and the queue is
        empty until t0. The bench stops them with SIGTERM (graceful shutdown) instead.
        """
        for n in range(1, count + 1):
            log = self.log_dir / f"worker-{n}.log"
            command = [sys.executable, "-m", "worker", "worker"]
            port = embedded.free_port()
            env = {**self.env, "METRICS_PORT": str(port)}
            self.processes.append(processes.start(command, log=log, env=env))
            self.logs.append(log)
            self.metrics_ports.append(port)

    @property
    def pids(self) -> list[int]:
        """The workers' process ids."""
        return [p.pid for p in self.processes]

    def running(self) -> int:
        """How many of the workers are still running."""
        return sum(p.poll() is None for p in self.processes)

    def _check_alive(self) -> None:
        for process, log in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                raise WorkerStartFailed(
                    f"worker {process.pid} exited with status {process.returncode}:\n"
                    + processes.tail(log)
                )

    async def wait_ready(self, ports: set[int]) -> None:
        """Wait until every worker is connected to both Postgres and Redis.

        A worker opens its Redis connection when arq starts and its Postgres pool in its
        start-up hook, right before it polls the queue: both at once means ready.
        """
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            self._check_alive()
            if all(ports <= procfs.connected_ports(pid) for pid in self.pids):
                return
            if time.monotonic() > deadline:
                raise WorkerStartFailed(f"workers not ready after {READY_TIMEOUT:.0f} s")
            await asyncio.sleep(0.05)

    async def counted_decisions(self) -> int:
        """The invitation decisions the workers' Prometheus metrics count, all together:
        what a monitoring system scraping them sees."""
        total = 0
        async with httpx.AsyncClient(timeout=10) as client:
            for port in self.metrics_ports:
                response = await client.get(f"http://127.0.0.1:{port}/metrics")
                response.raise_for_status()
                for family in text_string_to_metric_families(response.text):
                    total += int(
                        sum(
                            s.value
                            for s in family.samples
                            if s.name == "survey_worker_invitations_total"
                        )
                    )
        return total

    async def stop(self) -> list[int]:
        """Graceful shutdown (SIGTERM) of every worker; their exit statuses."""
        return await asyncio.to_thread(processes.stop, self.processes, timeout=self.stop_timeout)


@contextlib.asynccontextmanager
async def running(settings: Settings, count: int, log_dir: Path) -> AsyncIterator[Crew]:
    """Start `count` workers; they are stopped when the block ends, however it ends."""
    crew = Crew(settings, log_dir)
    try:
        crew.start(count)
        yield crew
    finally:
        await crew.stop()
