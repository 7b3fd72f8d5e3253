"""Short outages and slow relays through real worker processes: a campaign gets slower,
never duplicated (issues #21 and #29)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import asyncpg

from tests.faults.harness import WorkerProcess, ledger_rows, wait_until
from tests.faults.test_crashes import completed
from tests.support.pipeline import add_client, csv_of, launch, received_by
from tests.support.smtp import RecordingHandler
from worker.dev import embedded
from worker.settings import Settings

SMTP = tuple[RecordingHandler, int]
Spawn = Callable[[Settings], WorkerProcess]
DATA_DIR = Path(__file__).resolve().parents[2] / ".data" / "test"


async def assert_sent_exactly_once(settings: Settings, handler: RecordingHandler, cid: int) -> None:
    """Every invitation `sent` in the ledger and accepted by the server exactly once."""
    assert settings.database_url is not None
    rows = await ledger_rows(settings.database_url, cid)
    got = received_by(handler.messages)
    assert {a: r["state"] for a, r in rows.items()} == dict.fromkeys(rows, "sent")
    assert got == dict.fromkeys(rows, 1)


async def test_a_postgres_outage_after_a_chunk_went_out_doubles_nothing(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    # The chunk's messages all get their 250, then Postgres goes away for a few seconds
    # before their outcomes are written: a managed failover. The worker carries on when it
    # returns, long before the chunk's lease runs out and reconcile settles it from the
    # journal. With UNKNOWN_POLICY=resend, an invitation settled from a journal that the
    # next chunk overwrote would be mailed twice.
    settings = fast.model_copy(update={"unknown_policy": "resend", "claim_lease_seconds": 8.0})
    handler = smtp[0]
    await add_client(pg, "acme")
    emails = [f"p{i:02d}@example.com" for i in range(40)]
    release = asyncio.Event()
    handler.on("p09@example.com", stage="DATA", until=release)
    cid = (await launch(pg, settings, csv_of(*emails))).campaign_id
    await pg.close()
    spawn(settings)

    async def held() -> bool:
        return bool(handler.held)

    await wait_until(held, what="the held message")
    server = embedded.EmbeddedPostgres(DATA_DIR)
    port = server.running_port()
    assert port is not None
    server.stop()
    release.set()
    await asyncio.sleep(3)
    server.start(port)
    await completed(settings, cid)
    await assert_sent_exactly_once(settings, handler, cid)


async def test_a_relay_slower_than_the_lease_makes_a_campaign_slow_never_doubled(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    # Several slices claim chunks at once and wait for the worker's send window; each
    # chunk then takes most of a lease on the wire (issue #29's slow relay, scaled down).
    settings = fast.model_copy(
        update={
            "chunk_size": 12,
            "slice_size": 12,
            "smtp_connections": 4,
            "claim_lease_seconds": 3.0,
            "slices_in_flight": 6,
        }
    )
    handler = smtp[0]
    handler.data_delay = 0.6
    await add_client(pg, "acme")
    emails = [f"p{i:02d}@example.com" for i in range(60)]
    cid = (await launch(pg, settings, csv_of(*emails))).campaign_id
    await pg.close()
    spawn(settings)
    await completed(settings, cid, timeout=180)
    await assert_sent_exactly_once(settings, handler, cid)
