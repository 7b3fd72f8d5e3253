"""How a worker shares a route's messages among its relays: exact weighted shares, standbys
only while every weighted relay is in trouble, and nothing while all are (real Redis, where
the states are published)."""

from __future__ import annotations

import asyncio
from collections import Counter

from redis.asyncio import Redis

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
