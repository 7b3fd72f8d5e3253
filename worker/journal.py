"""The send journal: which messages of a worker's chunk in flight went on the wire.

A chunk is marked `sending` in Postgres in one durable commit; what happens to each of its
messages afterwards lives here, in one Redis string per worker process: a log of marks,
`<mark><invitation id>,` each, the last one of an invitation saying where it got to:

    q (queued: in the chunk, not started) ─► s (started: its content is leaving)
                                          ─► a (accepted: the server's 250 arrived)
    q ─► x (taken back by reconcile: it will never start here)

An appended log costs Redis the same small work however large the chunk, where a hash of
the chunk's invitations costs it time in proportion to its size as long as Redis keeps it
compact (up to `hash-max-ziplist-entries` fields: 512 in some builds).

The `q` marks are stored (acknowledged) before the chunk's `sending` mark commits. The `s`
marks of the messages whose content may leave in one turn of the event loop are written
in one write on the journal's own Redis connection, and each content right after it, in
the same step, without waiting for Redis: a worker killed at any instant has handed the
kernel (which delivers what was written) either a mark and maybe its content, or neither.
`a` marks follow the 250 replies in the same writes. No mark costs a round trip.

When a worker dies, `reconcile` settles its `sending` rows from the journal once their
lease runs out: `a` is sent, `q` goes back to pending, and only `s` (content on the wire,
no reply recorded), or a journal that was itself lost, is `unknown`. A worker starts no
message after its chunk's lease is nearly over, so reconcile never takes back what a
slow but live worker is still sending.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from enum import StrEnum

from redis.asyncio import Redis

from worker import ledger
from worker.redis_pipe import RedisPipe

# Long after any lease ran out: a journal is read only while its rows are `sending`.
TTL_SECONDS = 7 * 24 * 3600
# A worker stops starting a chunk's messages this long before its lease runs out.
LEASE_MARGIN = 0.1

# The log after taking back every message whose last mark is `q` (an `x` appended for
# each). A journal written as a hash (before the log) is read, and taken back, as one.
_TAKE_BACK = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'hash' then
    local marks = redis.call('HGETALL', KEYS[1])
    local log = {}
    for i = 1, #marks, 2 do
        if marks[i + 1] == 'q' then
            redis.call('HSET', KEYS[1], marks[i], 'x')
            marks[i + 1] = 'x'
        end
        log[#log + 1] = marks[i + 1] .. marks[i] .. ','
    end
    return table.concat(log)
end
if kind ~= 'string' then
    return false
end
local log = redis.call('GET', KEYS[1])
local last = {}
for mark, id in string.gmatch(log, '(%a)(%d+),') do
    last[id] = mark
end
local back = {}
for id, mark in pairs(last) do
    if mark == 'q' then
        back[#back + 1] = 'x' .. id .. ','
    end
end
if #back > 0 then
    local taken = table.concat(back)
    redis.call('APPEND', KEYS[1], taken)
    log = log .. taken
end
return log
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
    """One worker process's journal, on a Redis connection of its own (`RedisPipe`); it
    holds the one chunk that process has in flight.

    Opening a chunk waits for Redis's answer; the marks that follow are appended with the
    connection's replies turned off (`CLIENT REPLY OFF`), so each turn's marks cost one small
    write and nothing comes back: a lost connection, which stops all starts, is what
    matters.
    """

    def __init__(self, redis_url: str, worker_id: str) -> None:
        self._pipe = RedisPipe(redis_url, name=f"journal:{worker_id}")
        self.key = key_for(worker_id)
        self._starts: list[tuple[int, Callable[[], None], Callable[[], None]]] = []
        self._accepts: list[int] = []
        self._flush: asyncio.Handle | None = None
        self._deadline = 0.0
        self._quiet = False

    async def open(self, invitation_ids: Iterable[int], *, lease_seconds: float) -> None:
        """Start the journal of a new chunk: every invitation queued, nothing started.

        Called before the chunk's `sending` mark commits (and its lease starts); raises a
        redis-py error or OSError when Redis cannot take it, and then the chunk must not
        start.
        """
        if not self._pipe.is_open:
            await self._pipe.connect()
            self._quiet = False
        if self._flush is not None:
            # The last chunk's accepted marks, while replies are still off.
            self._flush.cancel()
            self._write_marks()
        if self._quiet:
            await self._pipe.ask("CLIENT", "REPLY", "ON")
            self._quiet = False
        self._deadline = time.monotonic() + lease_seconds * (1 - LEASE_MARGIN)
        await self._pipe.ask(
            "SET", self.key, _entries(invitation_ids, Mark.QUEUED), "EX", TTL_SECONDS
        )
        self._quiet = self._pipe.send(("CLIENT", "REPLY", "OFF"))

    def start(
        self, invitation_id: int, write_content: Callable[[], None], give_up: Callable[[], None]
    ) -> None:
        """Mark the message started, then write its content with `write_content`. The marks
        of the messages that start in one turn of the event loop are written at its end, in
        one write, each content right after; when the journal's connection is gone or the
        chunk's lease is nearly over, no content is written and `give_up` is called instead.
        """
        self._starts.append((invitation_id, write_content, give_up))
        self._write_soon()

    def accepted(self, invitation_id: int) -> None:
        """Note that the server accepted the message (written at the end of this turn of the
        event loop)."""
        self._accepts.append(invitation_id)
        self._write_soon()

    def close(self) -> None:
        """Drop the journal's connection (worker shutdown)."""
        self._pipe.close()

    def _write_soon(self) -> None:
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self._write_marks)

    def _write_marks(self) -> None:
        self._flush = None
        starts, self._starts = self._starts, []
        accepts, self._accepts = self._accepts, []
        log = _entries(accepts, Mark.ACCEPTED) if accepts else b""
        may_start = self._quiet and time.monotonic() <= self._deadline
        if starts and may_start:
            log += _entries([s[0] for s in starts], Mark.STARTED)
        # The marks go to the kernel before any of the contents they announce.
        started = bool(log) and self._quiet and self._pipe.send(("APPEND", self.key, log))
        started = started and may_start
        for _, write_content, give_up in starts:
            (write_content if started else give_up)()


def _entries(invitation_ids: Iterable[int], mark: Mark) -> bytes:
    """Log entries giving each invitation `mark`."""
    prefix = mark.value
    return "".join([f"{prefix}{i}," for i in invitation_ids]).encode()


def parse(log: bytes) -> dict[int, Mark]:
    """Where each invitation of a journal's log got to: its last mark."""
    marks: dict[int, Mark] = {}
    for entry in log.split(b",")[:-1]:
        marks[int(entry[1:])] = Mark(entry[:1].decode())
    return marks


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
    log = await redis.eval(_TAKE_BACK, 1, key_for(worker_id))  # type: ignore[misc]
    if not log:
        return None
    return parse(log if isinstance(log, bytes) else log.encode())
