"""`status --watch` counts each message when the server accepted it, not when its chunk of
CHUNK_SIZE is recorded in the ledger: the workers' send journals in Redis say how far each
message of a chunk in flight got."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from tests.support.pipeline import add_client, csv_of, launch
from tests.support.smtp import RecordingHandler
from tests.support.web import start_cli
from tests.test_watch import stop
from worker import campaigns, journal, queue
from worker.settings import Settings

SMTP = tuple[RecordingHandler, int]


async def test_the_watch_moves_per_message_inside_a_chunk(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    await add_client(pg, "acme")
    emails = [f"person{i}@example.com" for i in range(150)]
    report = await launch(pg, settings, csv_of(*emails))
    watch = await start_cli(settings, "status", str(report.campaign_id), "--watch", "--json")
    # One connection to a server that takes 40 ms per message, one slice in chunks of 100:
    # the ledger moves 0 -> 100 -> 150 after about 4 and 6 seconds; the watch, reading every
    # second, sees the first chunk on its way.
    smtp[0].data_delay = 0.04
    one_slice = {"SMTP_CONNECTIONS": "1", "SLICE_SIZE": "500", "CHUNK_SIZE": "100"}
    worker = await start_cli(settings, "worker", env=one_slice)
    try:
        out, stderr = await asyncio.wait_for(watch.communicate(), 120)
    finally:
        await stop(worker)
        await stop(watch)
    assert watch.returncode == 0, stderr.decode()
    seen = [json.loads(x) for x in out.decode().splitlines()]
    assert all(sum(s["counts"].values()) == 150 for s in seen)
    sent = [s["counts"].get("sent", 0) for s in seen]
    assert sent == sorted(sent) and sent[-1] == 150
    inside_the_first_chunk = {n for n in sent if 0 < n < 100}
    assert len(inside_the_first_chunk) >= 2, sent
    assert seen[-1]["status"] == "completed"


async def test_accepted_messages_of_a_chunk_in_flight_count_as_sent_once(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    await add_client(pg, "acme")
    report = await launch(pg, settings, csv_of(*(f"p{i}@example.com" for i in range(8))))
    other = await launch(pg, settings, csv_of("q@example.com"))
    ids = [r["id"] for r in await pg.fetch("SELECT id FROM invitations ORDER BY id")]
    mine, theirs = ids[:8], ids[8]
    # A worker holds a chunk of five: two accepted, one started, two queued.
    chunk = mine[:5]
    await pg.execute(
        "UPDATE invitations SET state = 'sending', claimed_by = 'w1' WHERE id = ANY($1)", chunk
    )
    await pg.execute(
        "UPDATE invitations SET state = 'sending', claimed_by = 'w2' WHERE id = $1", theirs
    )
    log = "".join(f"q{i}," for i in chunk) + f"s{chunk[0]},a{chunk[0]},s{chunk[1]},a{chunk[1]},"
    assert settings.redis_url is not None
    redis = await queue.connect(settings.redis_url)
    try:
        await redis.set(journal.key_for("w1"), log)
        await redis.set(journal.key_for("w2"), f"q{theirs},s{theirs},a{theirs},")
        async with pg.acquire() as conn:
            live = await campaigns.live_report(conn, redis, report.campaign_id)
            assert live.counts == {"sent": 2, "sending": 3, "pending": 3}
            ledger_only = await campaigns.live_report(conn, None, report.campaign_id)
            assert ledger_only.counts == {"sending": 5, "pending": 3}
            # The chunk's outcomes recorded: the two are counted by the ledger, not twice.
            await conn.execute(
                "UPDATE invitations SET state = 'sent', claimed_by = NULL WHERE id = ANY($1)",
                chunk[:2],
            )
            live = await campaigns.live_report(conn, redis, report.campaign_id)
            assert live.counts == {"sent": 2, "sending": 3, "pending": 3}
            # Every message of the chunk accepted: no `sending` left to show.
            await redis.append(journal.key_for("w1"), "".join(f"a{i}," for i in chunk[2:]))
            live = await campaigns.live_report(conn, redis, report.campaign_id)
            assert live.counts == {"sent": 5, "pending": 3}
            assert (await campaigns.live_report(conn, redis, other.campaign_id)).counts == {
                "sent": 1
            }
    finally:
        await redis.aclose()
