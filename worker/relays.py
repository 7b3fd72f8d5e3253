"""The relays a worker sends through: one SMTP pool each, their health, and which relay
carries a message.

A relay in trouble (down, TLS, login, throttling, a refused sender: the reasons of
`worker.relay_check`) carries nothing until a probe passes; probes back off from
RETRY_BASE_SECONDS up to MAX_PROBE_DELAY, and sending resumes by itself. The healthy
relays of a route share its messages by weight; standbys (weight 0) carry mail only while
every weighted relay of the route is in trouble. A message waiting for a busy relay's
session takes a free one of another relay of its route instead (`place`), so a relay that
keeps up carries more than its weight rather than idle. Each worker process sees trouble for
itself; the last state any worker saw is published in Redis, where `status` and /ops read
it (`read_states`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from redis.asyncio import Redis

from worker import queue, relay_check
from worker.errors import RelayTrouble
from worker.mailer import Place, SmtpPool
from worker.metrics import WorkerMetrics
from worker.ratelimit import RateLimiter
from worker.relay_config import Relay
from worker.smtp_session import ContentGate

log = structlog.get_logger("worker.relays")

KEY = "survey-worker:relays"
# The longest wait between two probes of a relay in trouble.
MAX_PROBE_DELAY = 300.0


@dataclass
class Health:
    """What a worker knows of one relay: ok (`reason` None) or in trouble since `since`."""

    reason: str | None = None
    code: int | None = None
    status: str | None = None
    reply: str | None = None
    error: str | None = None
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    # In trouble: when the next probe runs (the event loop's clock), and the wait after it.
    probe_at: float = 0.0
    delay: float = 0.0

    def public(self) -> dict[str, Any]:
        """The state as `status --json` shows it."""
        return {
            "state": "ok" if self.reason is None else "trouble",
            "reason": self.reason,
            "reply": _reply_text(self.code, self.status, self.reply, self.error),
            "since": self.since.isoformat(timespec="seconds"),
        }


def _reply_text(
    code: int | None, status: str | None, reply: str | None, error: str | None
) -> str | None:
    """`535 5.7.8 text`, or the error when no reply came, or None."""
    if code is None:
        return error
    return " ".join(str(p) for p in (code, status, reply) if p)


class Relays:
    """The SMTP pools of the configured relays, their health and the choice among them."""

    def __init__(
        self,
        relays: Sequence[Relay],
        redis: Redis,
        *,
        probe_base: float,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._relays = {r.name: r for r in relays}
        self._pools = {r.name: SmtpPool(r) for r in relays}
        self._health = {r.name: Health() for r in relays}
        self._redis = redis
        self._probe_base = probe_base
        self._metrics = metrics or WorkerMetrics()
        self._limiters = {
            r.name: RateLimiter(redis, r.rate, scope=f"relay:{r.name}") for r in relays if r.rate
        }
        self._tasks: set[asyncio.Task[None]] = set()
        # Each weighted relay's credit in the round robin of `choose`.
        self._credit: dict[str, int] = {}
        for name in self._relays:
            self._metrics.relay_up[name] = 1

    @property
    def names(self) -> list[str]:
        return list(self._relays)

    def health(self, name: str) -> Health:
        return self._health[name]

    def route(self, names: Sequence[str] | None) -> list[Relay]:
        """The configured relays of a route (None: every relay); names no longer
        configured are left out."""
        if names is None:
            return list(self._relays.values())
        return [self._relays[n] for n in names if n in self._relays]

    def choose(self, names: Sequence[str] | None) -> str | None:
        """A healthy relay of the route, in proportion to the weights (standbys when no
        weighted relay is healthy); None while every relay of the route is in trouble.

        Smooth weighted round robin (as nginx balances upstreams): each pick adds every
        candidate's weight to its credit and takes the one with most, which pays the total
        back; so the shares are exact over any few picks, and a chunk splits evenly.
        """
        healthy = [r for r in self.route(names) if self._health[r.name].reason is None]
        weighted = [r for r in healthy if r.weight > 0]
        if len(weighted) <= 1:
            return weighted[0].name if weighted else healthy[0].name if healthy else None
        credit = self._credit
        for r in weighted:
            credit[r.name] = credit.get(r.name, 0) + r.weight
        chosen = max(weighted, key=lambda r: credit[r.name])
        credit[chosen.name] -= sum(r.weight for r in weighted)
        return chosen.name

    def resume_at(self, names: Sequence[str] | None) -> datetime:
        """When a message of the route may be tried again: now if one of its relays is
        healthy, else at the earliest probe of its relays."""
        now = datetime.now(UTC)
        relays = self.route(names)
        if not relays or any(self._health[r.name].reason is None for r in relays):
            return now + timedelta(seconds=self._probe_base if not relays else 0)
        loop = asyncio.get_running_loop()
        first = min(self._health[r.name].probe_at for r in relays)
        return now + timedelta(seconds=max(first - loop.time(), 0) + 1)

    async def acquire(self, chosen: Iterable[str]) -> None:
        """Wait for the permits of the relays with a rate of their own (one per message)."""
        for name, count in Counter(chosen).items():
            limiter = self._limiters.get(name)
            if limiter is not None:
                await limiter.acquire(count)

    async def place(self, relay: str, route: Sequence[str] | None) -> tuple[str, Place]:
        """Where a message `choose` gave to `relay` goes: a place on its sessions, or on
        those of another healthy relay of the route of the same rank (weighted or standby),
        whichever frees first, the relay's own first; the relay that place is on.

        So no relay's sessions idle while another's have messages waiting, at the end of
        a chunk above all. A relay with a rate of its own is not shared: the message's
        permit was taken for it.
        """
        loop = asyncio.get_running_loop()
        again = False
        while True:
            names = self._sharing(relay, route)
            for name in names:
                taken = self._pools[name].take()
                if taken is not None:
                    # The place that woke this send may not be the one it took: another's
                    # waiter may have it.
                    for other in names:
                        if other != name:
                            self._pools[other].wake()
                    return name, taken
            waiter = loop.create_future()
            for name in names:
                self._pools[name].watch(waiter, again=again)
            await waiter
            again = True

    def _sharing(self, relay: str, route: Sequence[str] | None) -> list[str]:
        """`relay`, and unless it has a rate, the healthy relays of its rank in the route
        without one."""
        chosen = self._relays[relay]
        if chosen.rate:
            return [relay]
        rank = chosen.weight > 0
        return [relay] + [
            r.name
            for r in self.route(route)
            if r.name != relay
            and not r.rate
            and (r.weight > 0) == rank
            and self._health[r.name].reason is None
        ]

    async def send(
        self,
        relay: str,
        place: Place,
        *,
        sender: str,
        recipient: str,
        message: bytes,
        before_content: ContentGate | None = None,
    ) -> int:
        """Deliver through `relay` on `place` (from `place`); `RelayTrouble` marks the
        relay in trouble before it is raised."""
        try:
            return await self._pools[relay].send(
                sender=sender,
                recipient=recipient,
                message=message,
                before_content=before_content,
                place=place,
            )
        except RelayTrouble as e:
            self.trouble(e)
            raise

    def trouble(self, e: RelayTrouble) -> None:
        """Mark `e.relay` in trouble (once: later messages that fail with it change
        nothing) and start probing it."""
        health = self._health[e.relay]
        if health.reason is not None:
            return
        loop = asyncio.get_running_loop()
        self._health[e.relay] = Health(
            e.reason,
            e.code,
            e.status,
            e.reply,
            e.error,
            probe_at=loop.time() + self._probe_base,
            delay=self._probe_base,
        )
        self._metrics.relay_up[e.relay] = 0
        log.warning("relay.trouble", **self._fields(e.relay))
        self._spawn(self._publish(e.relay))
        self._spawn(self._probe_until_ok(e.relay))

    async def check(self) -> None:
        """Probe every relay now (at start): each is ok or in trouble as the probe says."""
        results = await asyncio.gather(*(relay_check.probe(r) for r in self._relays.values()))
        for relay, (_features, found) in zip(self._relays.values(), results, strict=True):
            if found is None:
                await self._publish(relay.name)
            else:
                self.trouble(found.error_for(relay.name))

    def states(self) -> dict[str, dict[str, Any]]:
        """Every relay's state as this process sees it."""
        return {name: h.public() for name, h in self._health.items()}

    async def close(self) -> None:
        """Stop probing and close every pool's sessions."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(pool.close() for pool in self._pools.values()))

    def _fields(self, name: str) -> dict[str, Any]:
        h = self._health[name]
        fields: dict[str, Any] = {"relay": name, "reason": h.reason}
        if h.code is not None:
            fields.update(smtp_code=h.code, smtp_status=h.status, smtp_reply=h.reply)
        elif h.error is not None:
            fields["error"] = h.error
        return fields

    async def _probe_until_ok(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            health = self._health[name]
            await asyncio.sleep(max(health.probe_at - loop.time(), 0))
            _features, found = await relay_check.probe(self._relays[name])
            if found is None:
                break
            delay = min(health.delay * 2, MAX_PROBE_DELAY)
            self._health[name] = Health(
                found.reason,
                found.code,
                found.status,
                found.reply,
                found.error,
                since=health.since,
                probe_at=loop.time() + delay,
                delay=delay,
            )
            await self._publish(name)
        since = self._health[name].since
        self._health[name] = Health()
        self._metrics.relay_up[name] = 1
        waited = (datetime.now(UTC) - since).total_seconds()
        log.info("relay.recovered", relay=name, seconds=round(waited))
        await self._publish(name)

    async def _publish(self, name: str) -> None:
        """Write the relay's state where `status` and /ops read it; Redis away, they show
        what was written last."""
        with contextlib.suppress(*queue.ERRORS):
            await self._redis.hset(KEY, name, json.dumps(self._health[name].public()))  # type: ignore[misc]

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def read_states(redis: Redis, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The last published state of each named relay (ok when none was published)."""
    if not names:
        return {}
    values = await redis.hmget(KEY, list(names))  # type: ignore[misc]
    ok = {"state": "ok", "reason": None, "reply": None, "since": None}
    return {n: json.loads(v) if v else dict(ok) for n, v in zip(names, values, strict=True)}


async def route_report(
    redis: Redis | None, relays: Sequence[Relay], route: Sequence[str] | None, status: str
) -> tuple[list[dict[str, Any]], bool]:
    """The state of each relay of a campaign's route (`state` "unknown" without a Redis
    that answers), and whether the campaign waits for one: running, with every relay of its
    route in trouble."""
    chosen = [r.name for r in relays if route is None or r.name in route]
    unknown = {"state": "unknown", "reason": None, "reply": None, "since": None}
    states = {name: dict(unknown) for name in chosen}
    if redis is not None:
        with contextlib.suppress(*queue.ERRORS):
            states = await read_states(redis, chosen)
    listed = [{"name": name, **states[name]} for name in chosen]
    waiting = status == "running" and all(s["state"] == "trouble" for s in listed)
    return listed, waiting


def waiting_lines(relays: Sequence[dict[str, Any]]) -> list[str]:
    """`waiting for relay NAME: REASON (REPLY) since TIME`, for each relay in trouble."""
    lines = []
    for r in relays:
        if r["state"] == "trouble":
            reply = f" ({r['reply']})" if r.get("reply") else ""
            lines.append(f"waiting for relay {r['name']}: {r['reason']}{reply} since {r['since']}")
    return lines
