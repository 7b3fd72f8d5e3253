"""The send journal: which messages of a worker's chunk in flight went on the wire.

A chunk is marked `sending` in Postgres in one durable commit; what happens to each of its
messages afterwards lives here, in one Redis hash per worker process, until the chunk's
outcomes are recorded. Each invitation's field moves

    q (queued: in the chunk, not started) ─► s (started: its content may leave)
                                          ─► a (accepted: the server's 250 arrived)
    q ─► x (taken back by reconcile: it will never start here)

Every move is conditional and atomic (a Lua script), so a worker and `reconcile` never
both own a message. A message's content leaves only after its `s` mark is stored, and
marks of concurrent messages are written together (one Redis call per batch, while the
SMTP round trips go on). When a worker dies, `reconcile` settles its `sending` rows from
the journal once their lease runs out: `a` is sent, `q` goes back to pending, and only
`s` (content on the wire, no reply recorded), or a journal that was itself lost, is
`unknown`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from enum import StrEnum

from redis.asyncio import Redis

from worker import ledger, queue

# Long after any lease ran out: a journal is read only while its rows are `sending`.
TTL_SECONDS = 7 * 24 * 3600

# ARGV: the number of starts, the invitation ids to start (q -> s), then those accepted
# (s -> a). Returns 1 or 0 per start: whether it may go on.
_MARK = """
local starts = tonumber(ARGV[1])
local granted = {}
for i = 2, starts + 1 do
    if redis.call('HGET', KEYS[1], ARGV[i]) == 'q' then
        redis.call('HSET', KEYS[1], ARGV[i], 's')
        granted[#granted + 1] = 1
    else
        granted[#granted + 1] = 0
    end
end
for i = starts + 2, #ARGV do
    if redis.call('HGET', KEYS[1], ARGV[i]) == 's' then
        redis.call('HSET', KEYS[1], ARGV[i], 'a')
    end
end
return granted
"""

# Every field and its mark, after turning each `q` into `x`.
_TAKE_BACK = """
local marks = redis.call('HGETALL', KEYS[1])
for i = 1, #marks, 2 do
    if marks[i + 1] == 'q' then
        redis.call('HSET', KEYS[1], marks[i], 'x')
        marks[i + 1] = 'x'
    end
end
return marks
"""


class Mark(StrEnum):
    """Where one message of a chunk got to."""

    QUEUED = "q"
    STARTED = "s"
    ACCEPTED = "a"
    TAKEN_BACK = "x"


def key_for(worker_id: str) -> str:
    """The Redis key of a worker process's journal."""
    return f"survey-worker:journal:{worker_id}"


class Journal:
    """One worker process's journal; it holds the one chunk that process has in flight."""

    def __init__(self, redis: Redis, worker_id: str) -> None:
        self._redis = redis
        self._key = key_for(worker_id)
        self._mark = redis.register_script(_MARK)
        self._starts: dict[int, asyncio.Future[bool]] = {}
        self._accepts: list[int] = []
        self._writer: asyncio.Task[None] | None = None

    async def open(self, invitation_ids: Iterable[int]) -> None:
        """Start the journal of a new chunk: every invitation queued, nothing started.

        Called before the chunk's `sending` mark commits; raises a `queue.ERRORS` error when
        Redis cannot take it, and then the chunk must not start.
        """
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key)
            pipe.hset(self._key, mapping=dict.fromkeys(invitation_ids, Mark.QUEUED.value))
            pipe.expire(self._key, TTL_SECONDS)
            await pipe.execute()

    async def start(self, invitation_id: int) -> bool:
        """Mark the message started; False when it must not start (taken back, or the
        journal could not be written): its content must then never leave."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._starts[invitation_id] = future
        self._write_soon()
        return await future

    def accepted(self, invitation_id: int) -> None:
        """Note that the server accepted the message (written with the next batch)."""
        self._accepts.append(invitation_id)
        self._write_soon()

    def _write_soon(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())

    async def _write(self) -> None:
        # Group commit: whatever arrived while the previous batch was written goes next.
        while self._starts or self._accepts:
            starts, self._starts = self._starts, {}
            accepts, self._accepts = self._accepts, []
            try:
                granted = await self._mark(keys=[self._key], args=[len(starts), *starts, *accepts])
            except queue.ERRORS:
                granted = [0] * len(starts)
            for future, ok in zip(starts.values(), granted, strict=True):
                if not future.done():
                    future.set_result(bool(ok))


def settle(
    expired: ledger.Expired, mark: Mark | None, *, message_id: str, resend: bool
) -> ledger.Outcome:
    """What an invitation its worker left `sending` becomes, by its journal mark.

    Accepted is sent; never started goes back to pending, its attempt not counted; started
    without a recorded reply, or not in the journal at all (the journal was lost), is
    `unknown`, or with UNKNOWN_POLICY=resend pending again (at most one duplicate).
    """
    if mark is Mark.ACCEPTED:
        return ledger.Outcome(expired.id, "sent", smtp_code=250, message_id=message_id)
    if mark in (Mark.QUEUED, Mark.TAKEN_BACK):
        return ledger.Outcome(
            expired.id, "pending", reason="worker_lost_before_smtp", started=False
        )
    return ledger.Outcome(
        expired.id, "pending" if resend else "unknown", reason="worker_lost_during_smtp"
    )


async def take_back(redis: Redis, worker_id: str) -> dict[int, Mark] | None:
    """Read a (presumed dead) worker's journal, taking back every message it had not
    started; None when there is no journal (never written, expired, or Redis lost it)."""
    flat = await redis.eval(_TAKE_BACK, 1, key_for(worker_id))  # type: ignore[misc]
    if not flat:
        return None
    return {int(flat[i]): Mark(_text(flat[i + 1])) for i in range(0, len(flat), 2)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
