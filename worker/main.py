"""The arq worker definition: which jobs a worker runs and how it starts."""

from __future__ import annotations

import socket
from signal import Signals
from typing import Any, ClassVar

import structlog
from arq.cron import CronJob, cron
from arq.worker import Function, Worker, func

from worker import feed, jobs, metrics, queue
from worker.settings import Settings

log = structlog.get_logger("worker.main")
# With retries at most a minute apart: about a week.
RECORD_OPT_OUT_TRIES = 10_000


class WorkerSettings:
    """arq settings; `survey-worker worker` passes `redis_settings` and `ctx` at start."""

    functions: ClassVar[list[Function]] = [
        # No result kept: a reconcile redrive (job id redrive:<campaign>) is deduplicated
        # only while one is queued or running, never for a while after it ran.
        func(jobs.launch_campaign, name=queue.Job.LAUNCH_CAMPAIGN, keep_result=0),  # type: ignore[arg-type]
        func(jobs.send_batch, name=queue.Job.SEND_BATCH),  # type: ignore[arg-type]
        func(jobs.send_invitation, name=queue.Job.SEND_INVITATION),  # type: ignore[arg-type]
        # A queued click is an opt-out: keep retrying for days while Postgres is away.
        func(
            jobs.record_opt_out,  # type: ignore[arg-type]
            name=queue.Job.RECORD_OPT_OUT,
            max_tries=RECORD_OPT_OUT_TRIES,
        ),
        # A complaint is an opt-out too: the same patience.
        func(
            jobs.record_feedback,  # type: ignore[arg-type]
            name=queue.Job.RECORD_FEEDBACK,
            max_tries=RECORD_OPT_OUT_TRIES,
        ),
    ]
    on_startup = jobs.startup
    on_shutdown = jobs.shutdown
    job_serializer = queue.serialize
    job_deserializer = queue.deserialize
    max_tries = 50
    max_jobs = jobs.CONCURRENT_JOBS
    keep_result = 60
    cron_jobs: ClassVar[list[CronJob]] = [
        # Retention, daily at a quiet hour (UTC); `unique` lets one worker run it.
        cron(jobs.purge, name=queue.Job.PURGE, hour={3}, minute={17}),  # type: ignore[arg-type]
        # The opt-out feed's drops into the directories registered with `feed --daily`.
        cron(feed.drop_feeds, name="drop_feeds", hour={4}, minute={7}),
        # The clients' sending domains, checked again (docs/sending-domains.md).
        cron(
            jobs.check_sending_domains,  # type: ignore[arg-type]
            name="check_sending_domains",
            hour={5},
            minute={23},
        ),
    ]


def health_key() -> str:
    """The Redis key this host's worker refreshes as its heartbeat."""
    return f"survey-worker:health:{socket.gethostname()}"


HEALTH_INTERVAL = 10


def every(seconds: int) -> dict[str, set[int]]:
    """arq cron fields for "every `seconds`" (rounded to what a clock face allows)."""
    if seconds < 60:
        return {"second": set(range(0, 60, seconds))}
    return {"second": {0}, "minute": set(range(0, 60, max(1, min(seconds // 60, 59))))}


class SurveyWorker(Worker):
    """arq's Worker that, on SIGTERM/SIGINT, lets the chunk in flight finish first, and
    that outlives a Redis restart.

    The signal stops picking jobs and tells running slices to stop claiming; each finishes
    the chunk it is sending and goes back to the queue (arq Retry). Whatever is still
    running after `job_completion_wait` seconds is cancelled.
    """

    async def main(self) -> None:
        # The pool comes from `queue.connect`, as every process's does: arq's own cannot
        # log in to Sentinels or check a rediss:// server against REDIS_CA_FILE.
        if self._pool is None:
            assert self.redis_settings is not None
            self._pool = await queue.connect(
                self.ctx["redis_url"], retries=self.redis_settings.conn_retries, ride_out=True
            )
            self._pool.default_queue_name = self.queue_name
            self._pool.expires_extra_ms = self.expires_extra_ms
        await super().main()

    async def _poll_iteration(self) -> None:
        # arq ends the worker on a Redis error in its poll loop (a command inside WATCH is
        # never retried, and a job that could not store its result re-raises here). The
        # ledger makes a re-run job harmless, so log it and poll again after poll_delay.
        try:
            await super()._poll_iteration()
        except queue.ERRORS as e:
            log.warning("worker.redis_unavailable", error=type(e).__name__)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        try:
            await super().start_jobs(job_ids)
        except queue.ERRORS:
            # arq (0.26 to 0.28) took a job slot for the job it was starting when Redis
            # failed, and would never give it back: the worker would stall once all were gone.
            self.job_counter -= 1
            self.sem.release()
            raise

    async def heart_beat(self) -> None:
        await super().heart_beat()
        counts = self.ctx.get("metrics")
        if counts is not None:
            counts.beat()

    def handle_sig_wait_for_completion(self, signum: Signals) -> None:
        state = self.ctx.get("run_state")
        if state is not None:
            state.stopping = True
        super().handle_sig_wait_for_completion(signum)


def create_worker(
    settings: Settings, *, database_url: str, redis_url: str, burst: bool, **options: Any
) -> Worker:
    """An arq worker for these settings; `options` go to arq's Worker (tests tune polling)."""
    reconcile = cron(
        jobs.reconcile,  # type: ignore[arg-type]
        name=queue.Job.RECONCILE,
        run_at_startup=True,
        unique=True,
        **every(settings.reconcile_interval_seconds),  # type: ignore[arg-type]
    )
    options.setdefault("handle_signals", True)
    counts = metrics.WorkerMetrics()
    worker = SurveyWorker(
        functions=WorkerSettings.functions,
        cron_jobs=[*WorkerSettings.cron_jobs, reconcile],
        health_check_key=health_key(),
        health_check_interval=HEALTH_INTERVAL,
        job_completion_wait=int(settings.smtp_timeout) + 5,
        redis_settings=queue.redis_settings(redis_url, ride_out=True),
        on_startup=WorkerSettings.on_startup,  # type: ignore[arg-type]
        on_shutdown=WorkerSettings.on_shutdown,  # type: ignore[arg-type]
        job_serializer=WorkerSettings.job_serializer,
        job_deserializer=WorkerSettings.job_deserializer,
        max_tries=WorkerSettings.max_tries,
        max_jobs=WorkerSettings.max_jobs,
        keep_result=WorkerSettings.keep_result,
        burst=burst,
        ctx={
            "settings": settings,
            "database_url": database_url,
            "redis_url": redis_url,
            "metrics": counts,
        },
        **options,
    )
    counts.jobs = lambda: (worker.jobs_complete, worker.jobs_retried, worker.jobs_failed)
    return worker
