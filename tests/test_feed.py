"""The opt-out feed on real Postgres: order, erasure, and no event skipped or repeated
when transactions commit out of order under many concurrent writers."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import asyncpg
import httpx

from tests.support.admin import migrated_up_to
from tests.support.pipeline import add_client, csv_of, launch
from tests.support.web import email_hash, serving, token_for, token_id
from tests.test_api import bearer, make_key
from worker import db, feed, optouts, privacy
from worker.settings import Settings
from worker.suppression import Scope

ACME = Scope("survey", "acme")
GLOBEX = Scope("survey", "globex")


async def add(conn: asyncpg.Connection, settings: Settings, scope: Scope, address: str) -> None:
    await optouts.add(
        conn,
        scope,
        email_hash=email_hash(settings, address),
        email=address,
        source="test",
        actor="test",
    )


async def read_all(pool: asyncpg.Pool, client_id: str, limit: int = 1000) -> list[feed.Event]:
    events: list[feed.Event] = []
    cursor = feed.START
    async with pool.acquire() as conn:
        while True:
            page = await feed.page(conn, client_id, cursor, limit)
            if not page.events:
                return events
            events.extend(page.events)
            cursor = page.next_cursor


async def test_a_late_commit_is_not_skipped_by_a_reader_that_saw_a_later_event(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    await add_client(pg, "acme")
    slow = await pg.acquire()
    fast = await pg.acquire()
    try:
        slow_tx = slow.transaction()
        await slow_tx.start()
        # The slow transaction's event gets the lower id and the lower transaction id...
        await add(slow, settings, ACME, "slow@example.com")
        # ... the fast one's commits first.
        await add(fast, settings, ACME, "fast@example.com")
        async with pg.acquire() as reader:
            first = await feed.page(reader, "acme", feed.START, 10)
            # A plain `id > cursor` reader would now hand out fast's event and skip slow's
            # for good; the feed holds fast's back until slow has ended.
            assert first.events == []
            assert first.next_cursor == feed.START
            await slow_tx.commit()
            second = await feed.page(reader, "acme", first.next_cursor, 10)
            third = await feed.page(reader, "acme", second.next_cursor, 10)
    finally:
        await pg.release(slow)
        await pg.release(fast)
    assert [(e.kind, e.email) for e in second.events] == [
        ("opt_out", "slow@example.com"),
        ("opt_out", "fast@example.com"),
    ]
    assert third.events == [] and third.next_cursor == second.next_cursor


async def test_kinds_clients_and_erasure(pg: asyncpg.Pool, settings: Settings) -> None:
    await add_client(pg, "acme")
    await add_client(pg, "globex")
    async with pg.acquire() as conn:
        await add(conn, settings, ACME, "ann@example.com")
        await add(conn, settings, ACME, "bob@example.com")
        await add(conn, settings, GLOBEX, "ann@example.com")
        # Repeating an opt-out changes nothing, and adds no event.
        await add(conn, settings, ACME, "bob@example.com")
        await privacy.resubscribe(
            conn, ACME, email_hash=email_hash(settings, "bob@example.com"), actor="t", reason="r"
        )
        await privacy.erase(conn, email_hash=email_hash(settings, "ann@example.com"), actor="t")
    acme = [(e.kind, e.email) for e in await read_all(pg, "acme")]
    globex = [(e.kind, e.email) for e in await read_all(pg, "globex")]
    # Ann was erased: she appears as her erasure only, in each list that held her.
    assert acme == [
        ("opt_out", "bob@example.com"),
        ("resubscribe", "bob@example.com"),
        ("erase", None),
    ]
    assert globex == [("erase", None)]


async def test_many_writers_and_a_reader_paging_meanwhile_lose_and_repeat_nothing(
    pg: asyncpg.Pool, settings: Settings, database_url: str
) -> None:
    await add_client(pg, "acme")
    await add_client(pg, "globex")
    writers, per_writer = 8, 40
    rng = random.Random(14)
    written: list[tuple[str, str]] = []
    done = asyncio.Event()

    async def writer(number: int) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            for i in range(per_writer):
                address = f"w{number}-{i}@example.com"
                scope = ACME if i % 5 else GLOBEX
                # Transactions that hold their event a while before committing, so
                # commits come out of id order all the time.
                async with conn.transaction():
                    await add(conn, settings, scope, address)
                    await asyncio.sleep(rng.random() * 0.02)
                if scope is ACME:
                    written.append(("opt_out", address))
                if i % 7 == 0 and scope is ACME:
                    await privacy.resubscribe(
                        conn,
                        ACME,
                        email_hash=email_hash(settings, address),
                        actor="test",
                        reason="test",
                    )
                    written.append(("resubscribe", address))
        finally:
            await conn.close()

    async def reader() -> list[tuple[str, str | None]]:
        seen: list[tuple[str, str | None]] = []
        cursor = feed.START
        conn = await asyncpg.connect(database_url)
        try:
            while True:
                finished = done.is_set()
                page = await feed.page(conn, "acme", cursor, rng.randint(1, 7))
                seen.extend((e.kind, e.email) for e in page.events)
                cursor = page.next_cursor
                if not page.events:
                    if finished:
                        return seen
                    await asyncio.sleep(0.005)
        finally:
            await conn.close()

    reading = asyncio.create_task(reader())
    await asyncio.gather(*(writer(n) for n in range(writers)))
    done.set()
    seen = await reading
    assert len(written) > 250
    assert Counter(seen) == Counter(written)  # nothing lost
    assert len(seen) == len(set(seen))  # nothing repeated
    # Each address's own events in the order they happened.
    for address in {a for _, a in written}:
        kinds = [k for k, a in seen if a == address]
        assert kinds in (["opt_out"], ["opt_out", "resubscribe"])
    # Paging as it happened gives what one read after the fact gives.
    assert seen == [(e.kind, e.email) for e in await read_all(pg, "acme", limit=3)]


async def test_the_feed_starts_from_the_entries_made_before_the_migration(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    # A new database migrated up to 006, with opt-outs on it, then migrated on.
    async with migrated_up_to(database_url, 6, tmp_path) as conn:
        await conn.execute(
            "INSERT INTO clients (id, name, sender_email) VALUES ('acme', 'Acme', 'a@acme.example')"
        )
        for address in ("first@example.com", "second@example.com"):
            await conn.execute(
                """INSERT INTO client_opt_outs (client_id, email_hash, email, source)
                   VALUES ('acme', $1, $2, 'test')""",
                email_hash(settings, address),
                address,
            )
        assert "007_client_api.sql" in await db.migrate(conn)
        page = await feed.page(conn, "acme", feed.START, 10)
    assert [(e.kind, e.email) for e in page.events] == [
        ("opt_out", "first@example.com"),
        ("opt_out", "second@example.com"),
    ]


async def test_the_api_feed_while_people_unsubscribe_through_the_web_app(
    pg: asyncpg.Pool, settings: Settings, database_url: str
) -> None:
    """End to end: one-click unsubscribes through the real web app and slow transactions
    of another writer, while a client's platform pages GET /v1/opt-outs."""
    await add_client(pg, "acme")
    clicked = [f"click{i}@example.com" for i in range(120)]
    slow = [f"slow{i}@example.com" for i in range(30)]
    await launch(pg, settings, csv_of(*clicked), enqueue=False)
    key = await make_key(pg, "acme")
    acme_token_id = await token_id(pg, "acme")
    done = asyncio.Event()

    async def clicker(http: httpx.AsyncClient, addresses: list[str]) -> None:
        for address in addresses:
            answer = await http.post(
                f"/unsubscribe/{token_for(settings, address, acme_token_id)}",
                content=b"List-Unsubscribe=One-Click",
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
            assert answer.status_code == 200

    async def slow_writer() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            for address in slow:
                async with conn.transaction():
                    await add(conn, settings, ACME, address)
                    await asyncio.sleep(0.03)
        finally:
            await conn.close()

    async def reader(http: httpx.AsyncClient) -> list[tuple[str, str | None]]:
        seen: list[tuple[str, str | None]] = []
        cursor = ""
        while True:
            finished = done.is_set()
            page = await http.get(
                "/v1/opt-outs", params={"after": cursor, "limit": 5}, headers=bearer(key)
            )
            assert page.status_code == 200, page.text
            body = page.json()
            seen.extend((e["kind"], e["email"]) for e in body["events"])
            cursor = body["next_cursor"]
            if not body["events"]:
                if finished:
                    return seen
                await asyncio.sleep(0.01)

    async with (
        serving(settings.model_copy(update={"api_rate_limit": 0})) as base,
        httpx.AsyncClient(base_url=base, timeout=60) as http,
    ):
        reading = asyncio.create_task(reader(http))
        await asyncio.gather(slow_writer(), *(clicker(http, clicked[i::8]) for i in range(8)))
        done.set()
        seen = await reading
    expected = [("opt_out", a) for a in clicked + slow]
    assert Counter(seen) == Counter(expected)
    assert len(seen) == len(set(seen))
