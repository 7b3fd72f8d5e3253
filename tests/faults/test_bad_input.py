"""Bad input never crashes a worker or stalls a campaign: each ends as a clear failure."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import asyncpg
import redis.asyncio

from tests.faults.harness import WorkerProcess, campaign_status, ledger_rows, wait_until
from tests.support.pipeline import add_client, csv_of, launch, received_by
from tests.support.smtp import RecordingHandler
from worker import addresses, queue
from worker.settings import Settings

SMTP = tuple[RecordingHandler, int]
Spawn = Callable[[Settings], WorkerProcess]


async def finished(settings: Settings, campaign_id: int) -> str:
    assert settings.database_url is not None
    url = settings.database_url
    result: list[str] = []

    async def check() -> bool:
        status = await campaign_status(url, campaign_id)
        result.append(status or "")
        return status in ("completed", "failed")

    await wait_until(check, what=f"campaign {campaign_id} to finish")
    return result[-1]


async def test_bad_rows_fail_alone_and_the_campaign_completes(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    await add_client(pg, "acme")
    report = await launch(
        pg,
        fast,
        csv_of("ok@example.com", "big@example.com", "josé@example.com"),
        enqueue=False,
    )
    key = fast.hash_key()
    # Rows a platform wrote straight into the ledger, past the CSV checks.
    await pg.execute(
        """INSERT INTO invitations (campaign_id, email, email_hash) VALUES ($1, $2, $3)""",
        report.campaign_id,
        "not an address",
        addresses.address_hash(key, "not an address"),
    )
    await pg.execute(
        """UPDATE invitations SET vars = jsonb_build_object('first_name', repeat('x', 3000000))
           WHERE email = 'big@example.com'"""
    )
    assert fast.redis_url is not None
    redis_pool = await queue.connect(fast.redis_url)
    await queue.enqueue_launch(redis_pool, report.campaign_id)
    await redis_pool.aclose()
    spawn(fast)
    assert await finished(fast, report.campaign_id) == "completed"
    assert fast.database_url is not None
    ledger = await ledger_rows(fast.database_url, report.campaign_id)
    assert ledger["ok@example.com"]["state"] == "sent"
    assert ledger["not an address"]["state"] == "failed"
    assert ledger["not an address"]["reason"].startswith("invalid_address")
    assert (ledger["big@example.com"]["state"], ledger["big@example.com"]["reason"]) == (
        "failed",
        "message_too_large",
    )
    utf8 = ledger["josé@example.com"]
    assert utf8["state"] == "failed" and "SMTPUTF8" in utf8["reason"]
    assert received_by(smtp[0].messages) == {"ok@example.com": 1}


async def test_template_broken_after_launch_fails_the_campaign_with_a_reason(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn, tmp_path: Path
) -> None:
    await add_client(pg, "acme")
    report = await launch(pg, fast, csv_of("a@example.com", "b@example.com"))
    broken = tmp_path / "templates"
    shutil.copytree(fast.templates_dir, broken)
    body = broken / "invitation" / "en" / "body.txt"
    body.write_text(body.read_text() + "\n{{ column_nobody_has }}\n")
    spawn(fast.model_copy(update={"templates_dir": broken}))
    assert await finished(fast, report.campaign_id) == "failed"
    reason = await pg.fetchval("SELECT reason FROM campaigns WHERE id = $1", report.campaign_id)
    assert "column_nobody_has" in reason
    assert smtp[0].messages == []


async def test_unknown_ids_and_malformed_jobs_leave_the_worker_running(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    assert fast.redis_url is not None
    arq = await queue.connect(fast.redis_url)
    await arq.enqueue_job("launch_campaign", 999_999)
    await arq.enqueue_job("send_batch", 999_999, 1, 10)
    await arq.enqueue_job("send_invitation", 999_999)
    await arq.enqueue_job("send_batch", "abc", None, [1])
    await arq.enqueue_job("record_opt_out", 42, {"not": "a token"})
    await arq.aclose()
    raw = redis.asyncio.Redis.from_url(fast.redis_url)
    await raw.set("arq:job:garbage", b"\x00 not json")
    await raw.zadd("arq:queue", {"garbage": 1})
    await raw.aclose()
    worker = spawn(fast)
    await add_client(pg, "acme")
    report = await launch(pg, fast, csv_of("after@example.com"))
    assert await finished(fast, report.campaign_id) == "completed"
    assert worker.process.poll() is None
    assert received_by(smtp[0].messages) == {"after@example.com": 1}
    assert "job.malformed" in worker.output()
