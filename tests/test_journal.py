"""The send journal on a real Redis: marks, take-back, the lease deadline, a lost Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial

import pytest
import redis
import redis.asyncio

from tests.deploy.servers import free_port
from worker import journal
from worker.journal import Journal, Mark

LEASE = 300.0


def nothing() -> None:
    """A content that needs no writing: the marks are what these tests look at."""


async def start(book: Journal, invitation_id: int, write: Callable[[], None] = nothing) -> bool:
    """Start a message in the journal; whether its content was written (else given up)."""
    written: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def write_content() -> None:
        write()
        written.set_result(True)

    book.start(invitation_id, write_content, partial(written.set_result, False))
    return await written


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


@pytest.fixture
def books(redis_url: str) -> Iterator[Callable[[str], Journal]]:
    """Journals of workers on the test Redis, their connections closed afterwards."""
    made: list[Journal] = []

    def book(worker_id: str) -> Journal:
        made.append(Journal(redis_url, worker_id))
        return made[-1]

    yield book
    for journal_ in made:
        journal_.close()


async def marks(
    client: redis.asyncio.Redis, book: Journal, arrived: Callable[[list[bytes]], bool]
) -> None:
    """Wait until the journal's marks are as `arrived` wants (marks get no reply)."""
    for _ in range(100):
        found = journal.parse(await client.get(book.key) or b"").values()
        if arrived([mark.value.encode() for mark in found]):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the marks never arrived")


async def test_marks_follow_each_message(
    client: redis.asyncio.Redis, books: Callable[[str], Journal]
) -> None:
    book = books("w1")
    await book.open([1, 2, 3], lease_seconds=LEASE, leased_at=time.monotonic())
    assert await start(book, 1) and await start(book, 2)
    book.accepted(1)
    await marks(client, book, lambda found: sorted(found) == [b"a", b"q", b"s"])
    assert await journal.take_back(client, "w1") == {
        1: Mark.ACCEPTED,
        2: Mark.STARTED,
        3: Mark.TAKEN_BACK,
    }


async def test_the_last_chunks_marks_stay_until_the_next_chunk_committed(
    client: redis.asyncio.Redis, books: Callable[[str], Journal]
) -> None:
    # Its outcomes were committed asynchronously: a Postgres crash before the next chunk's
    # `sending` mark commits may lose them, and then these marks settle its invitations.
    book = books("w2")
    await book.open([1, 2], lease_seconds=LEASE, leased_at=time.monotonic())
    assert await start(book, 1)
    await book.open([3], lease_seconds=LEASE, leased_at=time.monotonic())
    assert await journal.take_back(client, "w2") == {
        1: Mark.STARTED,
        2: Mark.TAKEN_BACK,
        3: Mark.TAKEN_BACK,
    }


async def test_a_committed_chunk_leaves_only_its_own_marks(
    client: redis.asyncio.Redis, books: Callable[[str], Journal]
) -> None:
    book = books("w10")
    await book.open([1, 2], lease_seconds=LEASE, leased_at=time.monotonic())
    assert await start(book, 1)
    await book.open([3, 4], lease_seconds=LEASE, leased_at=time.monotonic())
    book.committed()
    assert await start(book, 3)
    await marks(client, book, lambda found: sorted(found) == [b"q", b"s"])
    assert await journal.take_back(client, "w10") == {3: Mark.STARTED, 4: Mark.TAKEN_BACK}


async def test_accepted_marks_of_one_turn_are_one_command(
    client: redis.asyncio.Redis, books: Callable[[str], Journal]
) -> None:
    book = books("w3")
    ids = list(range(1, 101))
    await book.open(ids, lease_seconds=LEASE, leased_at=time.monotonic())
    for i in ids:
        assert await start(book, i)
    await marks(client, book, lambda found: set(found) == {b"s"})
    before = await _append_calls(client)
    for i in ids:
        book.accepted(i)
    await marks(client, book, lambda found: set(found) == {b"a"})
    assert await _append_calls(client) - before == 1
    assert set((await journal.take_back(client, "w3") or {}).values()) == {Mark.ACCEPTED}


async def test_nothing_starts_once_the_lease_is_nearly_over(
    client: redis.asyncio.Redis, books: Callable[[str], Journal]
) -> None:
    book = books("w4")
    await book.open([1], lease_seconds=0.05, leased_at=time.monotonic())
    await asyncio.sleep(0.1)
    assert await start(book, 1) is False
    assert await journal.take_back(client, "w4") == {1: Mark.TAKEN_BACK}


async def test_no_journal_is_none(client: redis.asyncio.Redis) -> None:
    assert await journal.take_back(client, "never-ran") is None


async def test_without_redis_no_chunk_opens_and_nothing_starts() -> None:
    book = Journal(f"redis://127.0.0.1:{free_port()}/0", "w5")
    with pytest.raises(OSError):
        await book.open([1], lease_seconds=LEASE, leased_at=time.monotonic())
    assert await start(book, 1) is False
    book.close()


async def test_a_lost_connection_stops_the_starts(
    client: redis.asyncio.Redis, books: Callable[[str], Journal]
) -> None:
    book = books("w6")
    await book.open([1, 2], lease_seconds=LEASE, leased_at=time.monotonic())
    assert await start(book, 1)
    own = [c["id"] for c in await client.client_list() if c["name"] == f"journal:{'w6'}"]
    assert len(own) == 1
    await client.client_kill_filter(_id=own[0])
    await asyncio.sleep(0.2)
    assert await start(book, 2) is False


async def _append_calls(client: redis.asyncio.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_append", {}).get("calls", 0))


async def test_the_starts_of_one_turn_are_one_write_before_their_contents(
    client: redis.asyncio.Redis, books: Callable[[str], Journal]
) -> None:
    book = books("w7")
    ids = list(range(1, 51))
    await book.open(ids, lease_seconds=LEASE, leased_at=time.monotonic())
    written: list[int] = []
    before = await _append_calls(client)
    started = await asyncio.gather(*(start(book, i, partial(written.append, i)) for i in ids))
    assert all(started)
    assert written == ids
    await marks(client, book, lambda found: set(found) == {b"s"})
    assert await _append_calls(client) - before == 1


async def test_a_journal_written_as_a_hash_is_still_settled(
    client: redis.asyncio.Redis,
) -> None:
    # A worker of the release before the log left its chunk as a hash of marks.
    key = journal.key_for("w8")
    await client.hset(key, mapping={"1": "a", "2": "s", "3": "q"})
    assert await journal.take_back(client, "w8") == {
        1: Mark.ACCEPTED,
        2: Mark.STARTED,
        3: Mark.TAKEN_BACK,
    }
    assert await client.hget(key, "3") == b"x"


async def test_a_taken_back_message_stays_taken_back(
    client: redis.asyncio.Redis, books: Callable[[str], Journal]
) -> None:
    book = books("w9")
    await book.open([1, 2], lease_seconds=LEASE, leased_at=time.monotonic())
    assert await start(book, 1)
    await marks(client, book, lambda found: sorted(found) == [b"q", b"s"])
    first = await journal.take_back(client, "w9")
    assert first == {1: Mark.STARTED, 2: Mark.TAKEN_BACK}
    assert await journal.take_back(client, "w9") == first


async def test_a_taken_back_journal_refuses_the_starts_of_its_live_worker(
    client: redis.asyncio.Redis, books: Callable[[str], Journal]
) -> None:
    # Reconcile took the chunk back (the lease ran out) while its worker was still alive:
    # the worker's next marks are refused in Redis and their contents never leave.
    book = books("w10")
    await book.open([1, 2, 3], lease_seconds=LEASE, leased_at=time.monotonic())
    assert await start(book, 1)
    await marks(client, book, lambda found: sorted(found) == [b"q", b"q", b"s"])
    assert await journal.take_back(client, "w10") == {
        1: Mark.STARTED,
        2: Mark.TAKEN_BACK,
        3: Mark.TAKEN_BACK,
    }
    written: list[int] = []
    assert await start(book, 2, partial(written.append, 2)) is False
    assert written == []
    assert (await journal.take_back(client, "w10") or {}).get(2) is Mark.TAKEN_BACK
    # The worker's next chunk is its own again.
    await book.open([4], lease_seconds=LEASE, leased_at=time.monotonic())
    assert await start(book, 4)


async def test_a_content_is_written_only_once_redis_stored_its_mark(
    redis_url: str, books: Callable[[str], Journal]
) -> None:
    book = books("w11")
    await book.open([1, 2], lease_seconds=LEASE, leased_at=time.monotonic())
    seen: list[dict[int, Mark]] = []
    plain = redis.Redis.from_url(redis_url)
    try:

        def look() -> None:
            seen.append(journal.parse(plain.get(book.key) or b""))

        assert await start(book, 1, look)
        assert await start(book, 2, look)
    finally:
        plain.close()
    assert seen[0][1] is Mark.STARTED and seen[1][2] is Mark.STARTED


async def test_the_deadline_counts_from_before_the_lease_began(
    client: redis.asyncio.Redis, books: Callable[[str], Journal]
) -> None:
    # A chunk that waited for its turn: its lease began a while before the journal opened.
    book = books("w12")
    await book.open([1], lease_seconds=1.0, leased_at=time.monotonic() - 1.0)
    assert await start(book, 1) is False
