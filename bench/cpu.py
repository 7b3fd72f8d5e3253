"""Where the CPU time goes: seconds used by each part of the system during a run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench import procfs
from worker.dev.embedded import EmbeddedPostgres, EmbeddedRedis

Snapshot = dict[str, dict[int, float]]


def _pid_in(path: Path) -> int:
    return int(path.read_text().split()[0])


@dataclass(frozen=True)
class Parts:
    """The processes of each part: workers, Postgres, Redis, the sink and the bench."""

    workers: list[int]
    postmaster: int
    redis: int
    sink: int

    @classmethod
    def of(cls, *, workers: list[int], sink: int, data_dir: Path) -> Parts:
        """The parts of a run on the embedded services in `data_dir`."""
        postmaster = _pid_in(EmbeddedPostgres(data_dir).pgdata / "postmaster.pid")
        redis = _pid_in(EmbeddedRedis(data_dir).root / "redis.pid")
        return cls(workers, postmaster, redis, sink)

    def groups(self) -> dict[str, list[int]]:
        """Each part's processes right now (Postgres backends come and go)."""
        return {
            "workers": self.workers,
            "postgres": [self.postmaster, *procfs.children(self.postmaster)],
            "redis": [self.redis],
            "sink": [self.sink],
            "bench": [os.getpid()],
        }


def snapshot(parts: Parts) -> Snapshot:
    """CPU seconds used so far by every process of every part."""
    taken: Snapshot = {}
    for name, pids in parts.groups().items():
        seconds = {pid: procfs.cpu_seconds(pid) for pid in pids}
        taken[name] = {pid: s for pid, s in seconds.items() if s is not None}
    return taken


def used(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds each part used between two snapshots.

    Approximate: a process that ended in between (a short-lived Postgres backend) is not
    counted.
    """
    return {
        name: round(sum(s - before.get(name, {}).get(pid, 0.0) for pid, s in pids.items()), 2)
        for name, pids in after.items()
    }
