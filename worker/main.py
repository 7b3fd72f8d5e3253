"""The arq worker definition: which jobs a worker runs and how it starts."""

from __future__ import annotations

from typing import Any, ClassVar

from arq.worker import Function, Worker, func

from worker import jobs, queue
from worker.settings import Settings


class WorkerSettings:
    """arq settings; `survey-worker worker` passes `redis_settings` and `ctx` at start."""

    functions: ClassVar[list[Function]] = [
        func(jobs.launch_campaign, name="launch_campaign"),  # type: ignore[arg-type]
        func(jobs.send_batch, name="send_batch"),  # type: ignore[arg-type]
        func(jobs.send_invitation, name="send_invitation"),  # type: ignore[arg-type]
        func(jobs.record_opt_out, name="record_opt_out"),  # type: ignore[arg-type]
    ]
    on_startup = jobs.startup
    on_shutdown = jobs.shutdown
    job_serializer = queue.serialize
    job_deserializer = queue.deserialize
    max_tries = 50
    max_jobs = 10
    keep_result = 60
    handle_signals = True


def create_worker(
    settings: Settings, *, database_url: str, redis_url: str, burst: bool, **options: Any
) -> Worker:
    """An arq worker for these settings; `options` go to arq's Worker (tests tune polling)."""
    return Worker(
        functions=WorkerSettings.functions,
        redis_settings=queue.redis_settings(redis_url),
        on_startup=WorkerSettings.on_startup,  # type: ignore[arg-type]
        on_shutdown=WorkerSettings.on_shutdown,  # type: ignore[arg-type]
        job_serializer=WorkerSettings.job_serializer,
        job_deserializer=WorkerSettings.job_deserializer,
        max_tries=WorkerSettings.max_tries,
        max_jobs=WorkerSettings.max_jobs,
        keep_result=WorkerSettings.keep_result,
        burst=burst,
        ctx={"settings": settings, "database_url": database_url},
        **options,
    )
