"""kill -9 of a worker at exact points of an SMTP transaction: only the messages on the wire
are ambiguous.

A campaign of 400 goes to a real SMTP server through a worker with 5 connections and
chunks of 250; the server holds chosen commands (by address) so the test knows exactly
what was on the wire when the worker is killed. A second worker then settles the dead
one's chunk from the send journal and finishes the campaign, under UNKNOWN_POLICY=hold.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import asyncpg
import pytest
import redis.asyncio

from tests.faults.harness import WorkerProcess, ledger_rows, wait_until
from tests.faults.test_crashes import completed
from tests.support.pipeline import add_client, csv_of, launch, received_by
from tests.support.smtp import RecordingHandler, Stage
from worker import journal
from worker.settings import Settings

SMTP = tuple[RecordingHandler, int]
Spawn = Callable[[Settings], WorkerProcess]
EMAILS = [f"person{i:03d}@example.com" for i in range(400)]
CONNECTIONS = 5
# Longer than any command the tests hold open before the kill: only the kill ends them.
HOLD = 60.0
# Messages from this one on are held (HOLD) at the server, the first CONNECTIONS of them
# that reach the held command. A held command stops its connection, and messages go out in
# order, so all connections end up held, each with one of these, and every message before
# them is accepted.
FIRST_HELD = 100


@pytest.fixture
def crash(fast: Settings) -> Settings:
    """One chunk of 250 at a time over 5 connections; the lease outlives the first chunk's
    start by far, and replies may take as long as the tests hold them."""
    return fast.model_copy(
        update={
            "chunk_size": 250,
            "slice_size": 500,
            "smtp_connections": CONNECTIONS,
            "smtp_timeout": HOLD / 2,
            "claim_lease_seconds": 5.0,
        }
    )


async def kill_when(
    pg: asyncpg.Pool,
    settings: Settings,
    handler: RecordingHandler,
    spawn: Spawn,
    *,
    accepted: int,
    held: int,
) -> tuple[int, list[str]]:
    """Launch the campaign, kill -9 its worker once the server accepted `accepted` messages
    and holds `held` commands, start a new worker, wait for the campaign to complete.

    Returns the campaign's id and the addresses whose command was held at the kill."""
    await add_client(pg, "acme")
    campaign_id = (await launch(pg, settings, csv_of(*EMAILS))).campaign_id
    first = spawn(settings)

    async def on_the_wire() -> bool:
        return len(handler.messages) >= accepted and len(handler.held) >= held

    await wait_until(on_the_wire, what=f"{accepted} accepted and {held} held")
    assert (len(handler.messages), len(handler.held)) == (accepted, held)

    await replies_read(settings, accepted)
    held_at_kill = sorted(address for _, address in handler.held)
    first.kill()
    spawn(settings)
    await completed(settings, campaign_id)
    return campaign_id, held_at_kill


def hold_from_first_held(handler: RecordingHandler, stage: Stage) -> None:
    """Hold `stage` of CONNECTIONS messages from FIRST_HELD on, whichever reach it first."""
    handler.on(*EMAILS[FIRST_HELD:], stage=stage, delay=HOLD, times=CONNECTIONS)


async def replies_read(settings: Settings, accepted: int) -> None:
    """Wait until the worker has read the `accepted` 250 replies (and noted them in its
    journal)."""

    async def replies_in() -> bool:
        return await journaled(settings, "a") == accepted

    await wait_until(replies_in, what=f"{accepted} replies read by the worker")


async def journaled(settings: Settings, mark: str) -> int:
    """How many messages the send journals in Redis hold with `mark`."""
    assert settings.redis_url is not None
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=journal.key_for("*"))]
        marks = [m for k in keys for m in journal.parse(await client.get(k) or b"").values()]
    finally:
        await client.aclose()
    return marks.count(journal.Mark(mark))


async def states_by_address(settings: Settings, campaign_id: int) -> dict[str, str]:
    assert settings.database_url is not None
    rows = await ledger_rows(settings.database_url, campaign_id)
    return {address: row["state"] for address, row in rows.items()}


def tally(states: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return counts


async def test_killed_while_the_server_holds_rcpt_nothing_is_ambiguous(
    pg: asyncpg.Pool, crash: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    handler = smtp[0]
    hold_from_first_held(handler, "RCPT")
    campaign_id, _ = await kill_when(
        pg, crash, handler, spawn, accepted=FIRST_HELD, held=CONNECTIONS
    )
    states = await states_by_address(crash, campaign_id)
    assert tally(states) == {"sent": 400}
    assert received_by(handler.messages) == dict.fromkeys(EMAILS, 1)


async def test_killed_while_the_server_holds_the_data_reply_only_those_are_unknown(
    pg: asyncpg.Pool, crash: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    handler = smtp[0]
    hold_from_first_held(handler, "DATA")
    campaign_id, on_the_wire = await kill_when(
        pg, crash, handler, spawn, accepted=FIRST_HELD, held=CONNECTIONS
    )
    assert len(on_the_wire) == CONNECTIONS
    states = await states_by_address(crash, campaign_id)
    assert tally(states) == {"sent": 400 - CONNECTIONS, "unknown": CONNECTIONS}
    assert sorted(a for a, s in states.items() if s == "unknown") == on_the_wire
    # Held, not resent: the server never accepted them, and nobody else got two.
    assert received_by(handler.messages) == {a: 1 for a in EMAILS if a not in on_the_wire}


async def test_killed_after_the_replies_before_the_ledger_write_they_are_sent(
    pg: asyncpg.Pool, crash: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    handler = smtp[0]
    # The last of the first chunk is held: the other 249 were accepted, and the chunk's
    # outcomes are written only when all of it is done.
    last_of_chunk = EMAILS[249]
    handler.on(last_of_chunk, stage="DATA", delay=HOLD, times=1)
    campaign_id, _ = await kill_when(pg, crash, handler, spawn, accepted=249, held=1)
    states = await states_by_address(crash, campaign_id)
    assert tally(states) == {"sent": 399, "unknown": 1}
    assert states[last_of_chunk] == "unknown"
    assert received_by(handler.messages) == {a: 1 for a in EMAILS if a != last_of_chunk}


async def test_killed_mid_campaign_on_a_slow_server_unknown_is_at_most_the_connections(
    pg: asyncpg.Pool, crash: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    handler = smtp[0]
    handler.data_delay = 0.01
    await add_client(pg, "acme")
    campaign_id = (await launch(pg, crash, csv_of(*EMAILS))).campaign_id
    first = spawn(crash)

    async def about_100() -> bool:
        return len(handler.messages) >= 100

    await wait_until(about_100, what="100 messages")
    first.kill()
    handler.data_delay = 0
    spawn(crash)
    await completed(crash, campaign_id)
    states = await states_by_address(crash, campaign_id)
    counts = tally(states)
    assert set(counts) <= {"sent", "unknown"}
    assert counts.get("unknown", 0) <= CONNECTIONS
    got = received_by(handler.messages)
    # UNKNOWN_POLICY=hold: no address got two; every one accepted is `sent`.
    assert all(n == 1 for n in got.values())
    assert all(got.get(a) == 1 for a, s in states.items() if s == "sent")


async def test_killed_in_a_reminder_round_each_person_gets_that_round_at_most_once(
    pg: asyncpg.Pool, crash: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    handler = smtp[0]
    await add_client(pg, "acme")
    campaign = await launch(
        pg, crash, csv_of(*EMAILS), reminders=1, reminder_interval=timedelta(seconds=1)
    )
    first = spawn(crash)

    async def first_round_sent() -> bool:
        return len(handler.messages) >= len(EMAILS)

    await wait_until(first_round_sent, what="the first messages")
    # Five reminders are on the wire, their DATA reply held, at the kill.
    hold_from_first_held(handler, "DATA")

    async def reminders_on_the_wire() -> bool:
        return (
            len(handler.messages) >= len(EMAILS) + FIRST_HELD and len(handler.held) >= CONNECTIONS
        )

    await wait_until(reminders_on_the_wire, what="100 reminders accepted and 5 held")
    on_the_wire = sorted(address for _, address in handler.held)
    assert (len(handler.messages), len(on_the_wire)) == (len(EMAILS) + FIRST_HELD, CONNECTIONS)
    await replies_read(crash, FIRST_HELD)
    first.kill()
    spawn(crash)
    await completed(crash, campaign.campaign_id)
    rows = await pg.fetch(
        "SELECT round, state, count(*) AS n FROM invitations GROUP BY 1, 2 ORDER BY 1, 2"
    )
    assert [tuple(r) for r in rows] == [
        (0, "sent", 400),
        (1, "sent", 400 - CONNECTIONS),
        (1, "unknown", CONNECTIONS),
    ]
    # UNKNOWN_POLICY=hold: nobody got a round twice.
    assert received_by(handler.messages) == {a: 1 if a in on_the_wire else 2 for a in EMAILS}
