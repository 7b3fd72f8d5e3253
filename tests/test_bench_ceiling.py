"""`make bench`'s ceiling: `smtp-source` timed before and after the run, the higher one
counting, with messages the size of those the workers send (bench/run.py, bench/report.py,
bench/campaign.py)."""

from __future__ import annotations

import dataclasses

import asyncpg

from bench import campaign
from bench.procfs import Machine
from bench.report import Figures, as_json
from tests.support.pipeline import add_client, csv_of, enqueue_launch, launch, run_workers
from tests.support.smtp import RecordingHandler
from worker import db
from worker.settings import Settings

FIGURES = Figures(
    recipients=100_000,
    opted_out=10_000,
    workers=2,
    slice_size=500,
    smtp_connections=20,
    relays=1,
    sink="Postfix smtp-sink",
    builtin_sink=False,
    seconds=50.0,
    invitations_per_s=2_000.0,
    messages_per_s=1_800.0,
    latency_p50=20.0,
    latency_p99=45.0,
    worker_peak_rss=95 * 2**20,
    redis_idle_memory=2**20,
    redis_peak_memory=2**20,
    message_size=4_833,
    ceiling_before_per_s=5_000.0,
    ceiling_after_per_s=3_200.0,
    import_seconds=7.0,
    import_rows_per_s=14_000.0,
    cpu_seconds={"workers": 60.0},
    cpu_window=50.0,
    machine=Machine(cores=2, cpu="AMD EPYC", memory_bytes=24 * 2**30),
    problems=[],
    metrics_decisions=100_000,
)


def test_the_ratio_is_taken_against_the_higher_ceiling() -> None:
    # smtp-source slowed down after the run (Postgres still vacuuming) raises no ratio.
    assert FIGURES.ceiling_per_s == 5_000.0
    assert FIGURES.ratio == 0.4
    quicker_after = dataclasses.replace(FIGURES, ceiling_after_per_s=8_000.0)
    assert quicker_after.ratio == 0.25
    only_after = dataclasses.replace(FIGURES, ceiling_before_per_s=None)
    assert only_after.ratio == 2_000.0 / 3_200.0
    neither = dataclasses.replace(FIGURES, ceiling_before_per_s=None, ceiling_after_per_s=None)
    assert neither.ceiling_per_s is None and neither.ratio is None
    assert '"ratio": 0.4' in as_json(FIGURES)
    assert '"ceiling_before_per_s": 5000.0' in as_json(FIGURES)


async def test_the_size_before_the_run_is_the_size_a_worker_sends(
    pg: asyncpg.Pool, settings: Settings, smtp: tuple[RecordingHandler, int]
) -> None:
    await add_client(pg, "acme", "Acme Research")
    report = await launch(pg, settings, csv_of("ann@example.com"), enqueue=False)
    async with pg.acquire() as conn:
        await db.init_connection(conn)
        size = await campaign.message_size(conn, settings, report.campaign_id)
    await enqueue_launch(settings, report.campaign_id)
    await run_workers(settings)
    (sent,) = smtp[0].messages
    # The same invitation a moment later: only the Date header's value differs, and it has
    # a fixed width.
    assert len(sent.data) == size
