"""How a worker shares a route's messages among its relays: exact weighted shares, standbys
only while every weighted relay is in trouble, and nothing while all are (real Redis, where
the states are published); a message waiting for a busy relay goes to a free session of
another (real SMTP servers), unless its relay has a rate of its own."""

from __future__ import annotations

import asyncio
from collections import Counter

from redis.asyncio import Redis

from tests.support.smtp import RecordingHandler, start_smtp_server
from worker.dev.embedded import free_port
from worker.errors import RelayTrouble
from worker.relay_config import Relay
from worker.relays import Relays, read_states


def relay(name: str, weight: int) -> Relay:
    # Nothing listens there: a probe of a relay in trouble keeps failing during the test.
    return Relay(name, "127.0.0.1", free_port(), "none", 1.0, 2, weight=weight)


async def test_weights_share_a_chunk_exactly_and_standbys_wait_their_turn(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    relays = Relays([relay("esp", 3), relay("backup", 1), relay("spare", 0)], redis, probe_base=60)
    try:
        assert Counter(relays.choose(None) for _ in range(8)) == {"esp": 6, "backup": 2}
        assert Counter(relays.choose(["backup", "spare"]) for _ in range(3)) == {"backup": 3}
        relays.trouble(RelayTrouble("unreachable", relay="esp", error="ConnectionRefusedError"))
        assert {relays.choose(None) for _ in range(4)} == {"backup"}
        relays.trouble(RelayTrouble("auth_failed", relay="backup", code=535, reply="no"))
        assert {relays.choose(None) for _ in range(4)} == {"spare"}
        assert relays.choose(["esp", "backup"]) is None
        relays.trouble(RelayTrouble("throttled", relay="spare", code=421, reply="later"))
        assert relays.choose(None) is None
        # Published by tasks of their own: wait for them (a few turns of the event loop).
        for _ in range(100):
            states = await read_states(redis, ["esp", "backup", "spare"])
            if all(s["state"] == "trouble" for s in states.values()):
                break
            await asyncio.sleep(0.02)
        assert {n: (s["state"], s["reason"]) for n, s in states.items()} == {
            "esp": ("trouble", "unreachable"),
            "backup": ("trouble", "auth_failed"),
            "spare": ("trouble", "throttled"),
        }
        assert states["backup"]["reply"] == "535 no"
    finally:
        await relays.close()
        await redis.aclose()


async def send_all(relays: Relays, count: int) -> Counter[str]:
    """Route `count` messages as a chunk is routed, send them all at once; the relay each
    went through."""

    async def one(n: int, routed: str) -> str:
        used, place = await relays.place(routed, None)
        await relays.send(
            used, place, sender="s@client.example", recipient=f"p{n}@example.com", message=b"x"
        )
        return used

    routed = [relays.choose(None) or "" for _ in range(count)]
    return Counter(await asyncio.gather(*(one(n, r) for n, r in enumerate(routed))))


async def slow_and_fast(
    redis_url: str, count: int, *, delay: float, rate: float | None = None
) -> tuple[Counter[str], int, int]:
    """Send `count` messages through a relay `slow` (each message `delay` seconds, one
    session, `rate` of its own) and a relay `fast` of equal weight: the relay each went
    through, and how many each real SMTP server received."""
    slow, fast = RecordingHandler(), RecordingHandler()
    slow.data_delay = delay
    redis = Redis.from_url(redis_url)
    async with start_smtp_server(slow) as slow_port, start_smtp_server(fast) as fast_port:
        relays = Relays(
            [
                Relay("slow", "127.0.0.1", slow_port, "none", 5.0, 1, rate=rate),
                Relay("fast", "127.0.0.1", fast_port, "none", 5.0, 1),
            ],
            redis,
            probe_base=60,
        )
        try:
            used = await send_all(relays, count)
        finally:
            await relays.close()
            await redis.aclose()
    return used, len(slow.messages), len(fast.messages)


async def test_a_free_session_of_another_relay_takes_a_message_a_busy_relay_holds(
    redis_url: str,
) -> None:
    used, slow, fast = await slow_and_fast(redis_url, 20, delay=0.3)
    # Ten were routed to each; the slow relay's one session (two places) kept few of its.
    assert used["fast"] >= 15
    assert (slow, fast) == (used["slow"], used["fast"])


async def test_a_relay_with_a_rate_of_its_own_keeps_its_messages(redis_url: str) -> None:
    used, slow, fast = await slow_and_fast(redis_url, 10, delay=0.1, rate=1000.0)
    # Its permits were taken for it: no other relay carries what was routed to it.
    assert used == {"slow": 5, "fast": 5}
    assert (slow, fast) == (5, 5)
