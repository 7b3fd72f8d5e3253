"""Fixtures of the fault-injection suite: short timeouts, worker processes cleaned up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.harness import WorkerProcess
from worker.settings import Settings


@pytest.fixture
def fast(settings: Settings) -> Settings:
    """Settings with short leases, retries and reconcile period, so faults resolve fast."""
    return settings.model_copy(
        update={
            "claim_lease_seconds": 3.0,
            "reconcile_interval_seconds": 1,
            "retry_base_seconds": 0.3,
            "smtp_timeout": 3.0,
            "suppression_timeout_seconds": 2.0,
            "slice_size": 20,
            "smtp_connections": 4,
            "chunk_size": 4,
        }
    )


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    """Start worker processes; every one still running is killed after the test."""
    started: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        process = WorkerProcess(settings, tmp_path, f"worker-{len(started) + 1}")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
