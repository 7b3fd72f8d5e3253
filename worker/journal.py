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

The `q` marks are stored (acknowledged) before the chunk's `sending` mark commits, after a
`|` entry and behind the last chunk's marks, which stay until that commit: the last
chunk's outcomes were committed asynchronously, and only a synchronous commit after them
(this one; Postgres's log is written in order) makes them durable, so until then a
Postgres crash may lose them and leave their invitations `sending`, to be settled from
these marks. Once the `sending` mark committed, everything before the last `|` goes. The `s`
marks of the messages whose content may leave in one turn of the event loop go to Redis in
one script call on the journal's own Redis connection, and each content is written when
Redis answers that the marks are stored: never before, so a worker killed at any instant
has left either a mark and maybe its content, or neither. `a` marks follow the 250 replies
in the same calls.

When a worker dies, `reconcile` settles its `sending` rows from the journal once their
lease runs out: `a` is sent, `q` goes back to pending, and only `s` (content on the wire,
no reply recorded), or a journal that was itself lost, is `unknown`. A worker starts no
message after its chunk's lease is nearly over (its deadline is counted from before the
database's lease began, so it is never later), and once `reconcile` took a journal back,
Redis refuses its further `s` marks in the same script that would store them: the worker
gives those messages up, and a slow but live worker never sends what was taken back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from enum import StrEnum

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker import records
from worker.redis_pipe import RedisPipe, Reply

# Long after any lease ran out: a journal is read only while its rows are `sending`.
TTL_SECONDS = 7 * 24 * 3600
# A worker stops starting a chunk's messages this long before its lease runs out.
LEASE_MARGIN = 0.1

# The log after taking back every message whose last mark is `q` (an `x` appended for
# each); from then on the journal refuses `s` marks (KEYS[2] set). A journal written as a
# hash (before the log) is read, and taken back, as one.
_TAKE_BACK = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'hash' or kind == 'string' then
    redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
end
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

# One turn's marks: ARGV[1] the `a` entries, ARGV[2] the `s` entries. 1 when the `s` marks
# are stored (the contents may leave); 0 when reconcile took the journal back.
_MARK = """
if #ARGV[1] > 0 then
    redis.call('APPEND', KEYS[1], ARGV[1])
end
if #ARGV[2] > 0 then
    if redis.call('EXISTS', KEYS[2]) == 1 then
        return 0
    end
    redis.call('APPEND', KEYS[1], ARGV[2])
end
return 1
"""


# A new chunk's `q` marks (ARGV[1], after a `|` entry) behind what the log holds; a journal
# written as a hash (before the log) is replaced.
_OPEN = """
if redis.call('TYPE', KEYS[1]).ok == 'string' then
    redis.call('APPEND', KEYS[1], ARGV[1])
    redis.call('EXPIRE', KEYS[1], ARGV[2])
else
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
"""

# The log from its last `|` entry on: the chunk in flight only.
_TRIM = """
local log = redis.call('GET', KEYS[1])
if not log then
    return 0
end
local last, at = nil, 0
repeat
    at = string.find(log, '|', at + 1, true)
    if at then
        last = at
    end
until not at
if last and last > 1 then
    redis.call('SET', KEYS[1], string.sub(log, last), 'KEEPTTL')
end
return 1
"""

# Where a chunk's marks begin in the log.
CHUNK_START = b"|,"


class Mark(StrEnum):
    """Where one message of a chunk got to."""

    QUEUED = "q"
    STARTED = "s"
    ACCEPTED = "a"
    TAKEN_BACK = "x"


def key_for(worker_id: str) -> str:
    """The Redis key of a worker process's journal."""
    return f"survey-worker:journal:{worker_id}"


def _taken_key(worker_id: str) -> str:
    """Set while reconcile has taken the worker's journal back (until its next chunk)."""
    return f"survey-worker:journal-taken:{worker_id}"


class Journal:
    """One worker process's journal, on a Redis connection of its own (`RedisPipe`); it
    holds the one chunk that process has in flight.

    Each turn's marks cost one small script call whose answer comes back through the
    connection's callback, with no task switch; a lost connection stops all starts.
    """

    def __init__(self, redis_url: str, worker_id: str) -> None:
        self._pipe = RedisPipe(redis_url, name=f"journal:{worker_id}")
        self.key = key_for(worker_id)
        self._taken = _taken_key(worker_id)
        self._script = b""
        self._starts: list[tuple[int, Callable[[], None], Callable[[], None]]] = []
        self._accepts: list[int] = []
        self._flush: asyncio.Handle | None = None
        self._deadline = 0.0

    async def open(
        self, invitation_ids: Iterable[int], *, lease_seconds: float, leased_at: float
    ) -> None:
        """Start the journal of a new chunk: every invitation queued, nothing started,
        behind the marks of the last chunk until `committed` says they may go.

        `leased_at` is the `time.monotonic()` taken before the database's lease of the chunk
        began, so the deadline for starts counted from it is never later than the lease.
        Called before the chunk's `sending` mark commits; raises a redis-py error or OSError
        when Redis cannot take it, and then the chunk must not start.
        """
        if not self._pipe.is_open:
            await self._pipe.connect()
            loaded = await self._pipe.ask("SCRIPT", "LOAD", _MARK)
            assert isinstance(loaded, bytes)
            self._script = loaded
        if self._flush is not None:
            # The last chunk's accepted marks.
            self._flush.cancel()
            self._write_marks()
        self._deadline = leased_at + lease_seconds * (1 - LEASE_MARGIN)
        self._pipe.call(("DEL", self._taken), _ignore)
        await self._pipe.ask(
            "EVAL",
            _OPEN,
            1,
            self.key,
            CHUNK_START + _entries(invitation_ids, Mark.QUEUED),
            TTL_SECONDS,
        )

    def committed(self) -> None:
        """The chunk's `sending` mark committed, synchronously: the outcomes of the chunks
        before it are durable, their marks go (no reply awaited: kept, they only take room)."""
        self._pipe.call(("EVAL", _TRIM, 1, self.key), _ignore)

    def start(
        self, invitation_id: int, write_content: Callable[[], None], give_up: Callable[[], None]
    ) -> None:
        """Mark the message started, then write its content with `write_content`. The marks
        of the messages that start in one turn of the event loop go to Redis at its end, in
        one call, and each content is written once Redis stored them; when the journal's
        connection is gone, the chunk's lease is nearly over or reconcile took the journal
        back, no content is written and `give_up` is called instead.
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
        if starts and time.monotonic() > self._deadline:
            for _, _, give_up in starts:
                give_up()
            starts = []
        if not starts and not accepts:
            return
        started = _entries([s[0] for s in starts], Mark.STARTED)
        accepted = _entries(accepts, Mark.ACCEPTED)

        def on_reply(reply: Reply) -> None:
            if isinstance(reply, ResponseError):
                # NOSCRIPT (Redis's scripts flushed) or worse: start afresh at the next chunk.
                self._pipe.close()
            for _, write_content, give_up in starts:
                (write_content if reply == 1 else give_up)()

        self._pipe.call(
            ("EVALSHA", self._script, 2, self.key, self._taken, accepted, started), on_reply
        )


def _ignore(reply: Reply) -> None:
    """A reply nobody waits for (a lost connection shows in the next call)."""


def _entries(invitation_ids: Iterable[int], mark: Mark) -> bytes:
    """Log entries giving each invitation `mark`."""
    prefix = mark.value
    return "".join([f"{prefix}{i}," for i in invitation_ids]).encode()


def parse(log: bytes) -> dict[int, Mark]:
    """Where each invitation of a journal's log got to: its last mark."""
    marks: dict[int, Mark] = {}
    for entry in log.split(b",")[:-1]:
        if entry != CHUNK_START[:1]:
            marks[int(entry[1:])] = Mark(entry[:1].decode())
    return marks


async def accepted(redis: Redis, worker_ids: Iterable[str]) -> set[int]:
    """The invitations the journals of these workers mark accepted (the server's 250
    arrived), their chunk's outcomes recorded in the ledger or not yet."""
    keys = [key_for(w) for w in worker_ids]
    if not keys:
        return set()
    found: set[int] = set()
    # MGET answers None for a key that holds no string (none, or an old journal's hash).
    for log in await redis.mget(keys):
        if log:
            marks = parse(log if isinstance(log, bytes) else log.encode())
            found.update(i for i, mark in marks.items() if mark is Mark.ACCEPTED)
    return found


def settle(
    expired: records.Expired, mark: Mark | None, *, message_id: str, resend: bool
) -> records.Outcome:
    """What an invitation its worker left `sending` becomes, by its journal mark.

    Accepted is sent; never started goes back to pending, its attempt not counted; started
    without a recorded reply, or not in the journal at all (the journal was lost), is
    `unknown`, or with UNKNOWN_POLICY=resend pending again (at most one duplicate).
    """
    if mark is Mark.ACCEPTED:
        return records.Outcome(expired.id, "sent", smtp_code=250, message_id=message_id)
    if mark in (Mark.QUEUED, Mark.TAKEN_BACK):
        return records.Outcome(
            expired.id, "pending", reason="worker_lost_before_smtp", started=False
        )
    return records.Outcome(
        expired.id, "pending" if resend else "unknown", reason="worker_lost_during_smtp"
    )


async def take_back(redis: Redis, worker_id: str) -> dict[int, Mark] | None:
    """Read a (presumed dead) worker's journal, taking back every message it had not
    started; None when there is no journal (never written, expired, or Redis lost it)."""
    log = await redis.eval(  # type: ignore[misc]
        _TAKE_BACK, 2, key_for(worker_id), _taken_key(worker_id), str(TTL_SECONDS)
    )
    if not log:
        return None
    return parse(log if isinstance(log, bytes) else log.encode())
