"""The arq worker definition: which jobs a worker runs and how it starts."""

from __future__ import annotations

from typing import ClassVar

from arq.worker import Function, func

from worker import jobs, queue


class WorkerSettings:
    """arq settings; `survey-worker worker` passes `redis_settings` and `ctx` at start."""

    functions: ClassVar[list[Function]] = [
        func(jobs.launch_campaign, name="launch_campaign"),  # type: ignore[arg-type]
        func(jobs.send_batch, name="send_batch"),  # type: ignore[arg-type]
        func(jobs.send_invitation, name="send_invitation"),  # type: ignore[arg-type]
    ]
    on_startup = jobs.startup
    on_shutdown = jobs.shutdown
    job_serializer = queue.serialize
    job_deserializer = queue.deserialize
    max_tries = 50
    max_jobs = 10
    keep_result = 60
    handle_signals = True

