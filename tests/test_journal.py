"""The send journal on a real Redis: conditional marks, take-back, batching, failure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from tests.deploy.servers import free_port
from worker import journal, queue
from worker.journal import Journal, Mark


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


async def test_a_message_starts_once_and_its_acceptance_is_kept(
    client: redis.asyncio.Redis,
) -> None:
    book = Journal(client, "w1")
    await book.open([1, 2, 3])
    assert await book.start(1) is True
    assert await book.start(1) is False, "a message starts once"
    book.accepted(1)
    assert await book.start(2) is True
    # Accepting a message that never started changes nothing.
    book.accepted(3)
    assert await journal.take_back(client, "w1") == {
        1: Mark.ACCEPTED,
        2: Mark.STARTED,
        3: Mark.TAKEN_BACK,
    }


async def test_what_reconcile_took_back_never_starts(client: redis.asyncio.Redis) -> None:
    book = Journal(client, "w2")
    await book.open([10, 11])
    assert await book.start(10) is True
    assert await journal.take_back(client, "w2") == {10: Mark.STARTED, 11: Mark.TAKEN_BACK}
    assert await book.start(11) is False


async def test_a_new_chunk_replaces_the_last_one(client: redis.asyncio.Redis) -> None:
    book = Journal(client, "w3")
    await book.open([1, 2])
    assert await book.start(1) is True
    await book.open([3])
    assert await journal.take_back(client, "w3") == {3: Mark.TAKEN_BACK}


async def test_no_journal_is_none(client: redis.asyncio.Redis) -> None:
    assert await journal.take_back(client, "never-ran") is None


async def test_concurrent_marks_are_written_in_batches(client: redis.asyncio.Redis) -> None:
    book = Journal(client, "w4")
    ids = list(range(1, 201))
    await book.open(ids)
    before = await _script_calls(client)
    assert all(await asyncio.gather(*(book.start(i) for i in ids)))
    calls = await _script_calls(client) - before
    assert 1 <= calls < len(ids) / 4, calls
    assert set((await journal.take_back(client, "w4") or {}).values()) == {Mark.STARTED}


async def test_without_redis_nothing_starts() -> None:
    gone = redis.asyncio.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    book = Journal(gone, "w5")
    with pytest.raises(queue.ERRORS):
        await book.open([1])
    assert await book.start(1) is False
    await gone.aclose()


async def _script_calls(client: redis.asyncio.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))
