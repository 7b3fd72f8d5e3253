"""The randomized fault campaign's machinery: a seeded schedule of faults, opt-outs that
know which sends they may race with, and the invariants checked from the ledger and the
SMTP server's own record (tests/faults/test_fault_campaign.py, `make soak`).

An opt-out made while the campaign runs races with chunks whose send-time check already
ran: those may still go out (DESIGN.md: a send is suppressed when its check runs after the
opt-out committed). So each opt-out made during the run first locks, in a transaction of
its own, the address's due invitations in the opt-out's scope (workers claim with `SKIP
LOCKED`, so none of them can be checked until the opt-out was accepted) and notes the ones
it could not lock or that were already `sending`: those, and rows not yet visible then,
are the only ones that may be accepted by the server after the opt-out was.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32

import asyncpg

from tests.support.smtp import RecordedMessage
from worker import message

FINAL = frozenset({"sent", "suppressed", "failed", "unknown", "cancelled"})
# (kind, weight) of the events the schedule draws from.
EVENTS: list[tuple[str, float]] = [
    ("launch", 4.0),
    ("kill9", 2.0),
    ("sigterm", 1.0),
    ("postgres_down", 1.5),
    ("redis_restart", 1.0),
    ("redis_flush", 1.0),
    ("smtp_slow", 1.5),
    ("smtp_451", 1.0),
    ("smtp_550", 0.5),
    ("smtp_drop", 1.0),
    ("click", 2.0),
    ("opt_out", 1.0),
]


def schedule(rng: random.Random, seconds: float) -> list[tuple[float, str]]:
    """About one event every three seconds over `seconds`, in time order."""
    kinds = [k for k, _ in EVENTS]
    weights = [w for _, w in EVENTS]
    count = max(8, int(seconds / 3))
    return sorted((rng.uniform(1, seconds), rng.choices(kinds, weights)[0]) for _ in range(count))


@dataclass(frozen=True)
class Scope:
    """An opt-out list: a client's (`client_id`) or the marketing list (None)."""

    client_id: str | None

    def applies(self, client_id: str, kind: str) -> bool:
        """Whether this list suppresses a message of a campaign of `client_id`/`kind`."""
        return client_id == self.client_id if self.client_id else kind == "marketing"

    def __str__(self) -> str:
        return self.client_id or "marketing"


@dataclass
class OptOut:
    """An opt-out accepted at `at` (time.time()); `racing` the invitations whose check may
    have run before it, `visible_up_to` the last invitation id that may have been
    invisible to the lock (rows not seen with an id up to it may race too)."""

    address: str
    scope: Scope
    at: float
    how: str
    racing: frozenset[int] = frozenset()
    seen: frozenset[int] = frozenset()
    visible_up_to: int = 0

    def may_race(self, invitation_id: int) -> bool:
        return invitation_id in self.racing or (
            invitation_id not in self.seen and invitation_id <= self.visible_up_to
        )


SCOPED = """FROM invitations i JOIN campaigns c ON c.id = i.campaign_id
            WHERE i.email = $1
              AND (c.client_id = $2 OR ($2::text IS NULL AND c.kind = 'marketing'))"""


async def lock_due(
    conn: asyncpg.Connection, address: str, scope: Scope
) -> tuple[frozenset[int], frozenset[int]]:
    """In the caller's transaction, lock the address's due invitations in `scope`; return
    (the ids that may be racing: `sending` or claimed by a worker, every id seen)."""
    locked = {
        r["id"]
        for r in await conn.fetch(
            f"""SELECT i.id {SCOPED} AND i.state IN ('pending', 'deferred')
                FOR UPDATE OF i SKIP LOCKED""",
            address,
            scope.client_id,
        )
    }
    rows = await conn.fetch(f"SELECT i.id, i.state {SCOPED}", address, scope.client_id)
    racing = frozenset(r["id"] for r in rows if r["state"] not in FINAL and r["id"] not in locked)
    return racing, frozenset(r["id"] for r in rows)


async def max_invitation_id(conn: asyncpg.Connection) -> int:
    value = await conn.fetchval("SELECT coalesce(max(id), 0) FROM invitations")
    return int(value)


@dataclass
class Sent:
    """One message the server accepted, with the invitation its Message-ID names."""

    invitation_id: int
    recipient: str
    at: float


def accepted(messages: list[RecordedMessage], arrivals: list[float]) -> list[Sent]:
    parser = BytesHeaderParser(policy=compat32)
    out = []
    for m, at in zip(messages, arrivals, strict=True):
        named = message.invitation_of_message_id(str(parser.parsebytes(m.data)["Message-ID"]))
        assert named is not None, f"a message without our Message-ID: {m.data[:300]!r}"
        out.append(Sent(named[0], m.recipients[0], at))
    return out


@dataclass
class Tally:
    """What the run did, for the summary line."""

    faults: Counter[str] = field(default_factory=Counter)
    invariants: Counter[str] = field(default_factory=Counter)

    def __str__(self) -> str:
        faults = " ".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
        checks = " ".join(f"{k}={v}" for k, v in sorted(self.invariants.items()))
        return f"faults: {faults or 'none'}; invariants checked: {checks}"


async def sleep_until(start: float, at: float) -> None:
    await asyncio.sleep(max(0.0, start + at - time.monotonic()))
