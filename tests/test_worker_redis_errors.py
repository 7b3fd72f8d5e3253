"""A worker outlives Redis errors while it starts jobs, and keeps all its job slots.

Redis is real: an ACL user without WATCH (the command arq starts every job with) makes each
attempt to start a job fail the way a Redis restart in the middle of it does.
"""

from __future__ import annotations

import asyncio
import os

import asyncpg
import redis.asyncio
from structlog.testing import capture_logs

from tests.faults.harness import wait_until
from tests.support.pipeline import add_client, csv_of, launch, make_worker, received_by
from tests.support.smtp import RecordingHandler
from worker.jobs import CONCURRENT_JOBS
from worker.settings import Settings

SMTP = tuple[RecordingHandler, int]


async def test_failed_job_starts_are_logged_and_leave_every_slot_free(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    assert settings.redis_url is not None
    user = f"no-watch-{os.getpid()}"
    admin = redis.asyncio.Redis.from_url(settings.redis_url)
    await admin.execute_command(
        "ACL", "SETUSER", user, "on", ">secret", "~*", "&*", "+@all", "-watch"
    )
    scheme, _, rest = settings.redis_url.partition("://")
    worker_settings = settings.model_copy(update={"redis_url": f"{scheme}://{user}:secret@{rest}"})
    try:
        await add_client(pg, "acme")
        await launch(pg, settings, csv_of("patient@example.com"))
        worker = make_worker(worker_settings)
        with capture_logs() as logs:
            run = asyncio.create_task(worker.main())

            def failures() -> int:
                return sum(e["event"] == "worker.redis_unavailable" for e in logs)

            async def more_failures_than_slots() -> bool:
                return failures() > CONCURRENT_JOBS + 1 or run.done()

            # More failed starts than the worker has job slots: a slot lost per failure
            # would leave none for the job once Redis works again.
            await wait_until(more_failures_than_slots, timeout=20, what="failed job starts")
            assert failures() > CONCURRENT_JOBS + 1 and not run.done()
            await admin.execute_command("ACL", "SETUSER", user, "+watch")
            await asyncio.wait_for(run, 30)
        await worker.close()
    finally:
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()

    assert received_by(smtp[0].messages) == {"patient@example.com": 1}
    assert all(
        e.get("error") == "NoPermissionError"
        for e in logs
        if e["event"] == "worker.redis_unavailable"
    )
