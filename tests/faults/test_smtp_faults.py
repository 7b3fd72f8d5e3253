"""SMTP servers that are down, busy, refusing or dropping, and opt-outs during a send."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from tests.faults.harness import WorkerProcess, campaign_status, ledger_rows, wait_until
from tests.support.pipeline import add_client, csv_of, launch, opt_out, received_by
from tests.support.smtp import RecordingHandler
from worker import addresses
from worker.settings import Settings
from worker.suppression import Scope

SMTP = tuple[RecordingHandler, int]
Spawn = Callable[[Settings], WorkerProcess]


async def finished(settings: Settings, campaign_id: int, timeout: float = 60) -> None:
    assert settings.database_url is not None
    url = settings.database_url

    async def check() -> bool:
        return await campaign_status(url, campaign_id) in ("completed", "failed")

    await wait_until(check, timeout=timeout, what=f"campaign {campaign_id} to finish")


async def rows(settings: Settings, campaign_id: int) -> dict[str, asyncpg.Record]:
    assert settings.database_url is not None
    return await ledger_rows(settings.database_url, campaign_id)


async def test_451_on_first_attempt_is_delivered_on_retry(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    handler = smtp[0]
    handler.on("busy@example.com", reply="451 4.3.0 Try again later", times=1)
    await add_client(pg, "acme")
    report = await launch(pg, fast, csv_of("busy@example.com", "ok@example.com"))
    spawn(fast)
    await finished(fast, report.campaign_id)
    ledger = await rows(fast, report.campaign_id)
    assert ledger["busy@example.com"]["state"] == "sent"
    assert ledger["busy@example.com"]["attempts"] == 2
    assert ledger["ok@example.com"]["attempts"] == 1
    assert received_by(handler.messages) == {"busy@example.com": 1, "ok@example.com": 1}


async def test_550_fails_once_goes_to_bounce_list_others_delivered(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    handler = smtp[0]
    handler.on("gone@example.com", reply="550 5.1.1 No such user")
    await add_client(pg, "acme")
    emails = ["gone@example.com", "a@example.com", "b@example.com"]
    report = await launch(pg, fast, csv_of(*emails))
    spawn(fast)
    await finished(fast, report.campaign_id)
    ledger = await rows(fast, report.campaign_id)
    gone = ledger["gone@example.com"]
    assert (gone["state"], gone["reason"], gone["smtp_code"], gone["attempts"]) == (
        "failed",
        "hard_bounce",
        550,
        1,
    )
    bounce = await pg.fetchval(
        "SELECT kind FROM bounces WHERE email_hash = $1",
        addresses.address_hash(fast.hash_key(), "gone@example.com"),
    )
    assert bounce == "hard"
    assert received_by(handler.messages) == {"a@example.com": 1, "b@example.com": 1}


async def test_connection_dropped_after_data_is_unknown_and_held(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    handler = smtp[0]
    handler.on("lost@example.com", stage="DATA", drop=True)
    await add_client(pg, "acme")
    report = await launch(pg, fast, csv_of("lost@example.com", "ok@example.com"))
    spawn(fast)
    await finished(fast, report.campaign_id)
    ledger = await rows(fast, report.campaign_id)
    assert ledger["lost@example.com"]["state"] == "unknown"
    assert ledger["ok@example.com"]["state"] == "sent"
    assert len(handler.dropped) == 1
    assert received_by(handler.messages) == {"ok@example.com": 1}


async def test_opt_out_during_a_slow_campaign_is_honoured(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    handler = smtp[0]
    handler.data_delay = 0.1
    settings = fast.model_copy(update={"smtp_connections": 2, "chunk_size": 2})
    await add_client(pg, "acme")
    emails = [f"p{i:02d}@example.com" for i in range(30)]
    report = await launch(pg, settings, csv_of(*emails))
    spawn(settings)

    async def some_sent() -> bool:
        return len(handler.messages) >= 4

    await wait_until(some_sent, what="first messages")
    await opt_out(pg, settings, emails[-1], Scope("survey", "acme"))
    await finished(settings, report.campaign_id)
    ledger = await rows(settings, report.campaign_id)
    assert ledger[emails[-1]]["state"] == "suppressed"
    assert emails[-1] not in received_by(handler.messages)
    assert len(handler.messages) == len(emails) - 1
