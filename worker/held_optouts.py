"""Opt-outs accepted while Postgres was down, held in Redis until they are recorded.

The web app accepts a click it cannot store in Postgres by queuing the `record_opt_out`
job; until that job has run, the send-time check must still see the click. So the click is
first held here, in one Redis set whose members name a list and an address's keyed hash
(`c<client token id>:<hash>` for a client's list, `m:<hash>` for the marketing list), and
only then queued; the job takes it out once Postgres holds it. A click is accepted only by
a Redis that keeps its writes across a restart (append-only file on): anywhere else the
person is asked to try again.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis

from worker.states import Kind
from worker.tokens import TokenClaims

KEY = "survey-worker:opt-outs-held"


def _names(client_token_id: int | None, marketing: bool, email_hash: bytes) -> list[str]:
    """The set's members for an address on that client's list and, with `marketing`, on
    the marketing list."""
    hexed = email_hash.hex()
    named = [] if client_token_id is None else [f"c{client_token_id}:{hexed}"]
    return named + ([f"m:{hexed}"] if marketing else [])


def members(claims: TokenClaims) -> list[str]:
    """The set's members for the lists a token's click leaves."""
    return _names(claims.client_id, claims.lists_marketing, claims.email_hash)


def checked(client_token_id: int, kind: Kind, email_hash: bytes) -> list[str]:
    """The members that suppress a message of `kind` from that client to that address."""
    return _names(client_token_id, kind == "marketing", email_hash)


async def durable(redis: Redis) -> bool:
    """Whether Redis writes what it is given to its append-only file, so a restart keeps
    it (a snapshot loses what came after it)."""
    info = await redis.info("persistence")
    return str(info.get("aof_enabled")) == "1"


async def hold(redis: Redis, claims: TokenClaims) -> None:
    """Hold the click where the send-time check reads it; raises a Redis error or OSError
    when Redis cannot take it."""
    await redis.sadd(KEY, *members(claims))  # type: ignore[misc]


async def release(redis: Redis, claims: TokenClaims) -> None:
    """Drop the held click (it is recorded in Postgres now)."""
    await redis.srem(KEY, *members(claims))  # type: ignore[misc]


async def held(
    redis: Redis, client_token_id: int, kind: Kind, hashes: Iterable[bytes]
) -> dict[bytes, str]:
    """The addresses among `hashes` a held click suppresses, with the reason; raises a
    Redis error or OSError when Redis cannot answer (the caller sends nothing)."""
    wanted = [(h, m) for h in hashes for m in checked(client_token_id, kind, h)]
    if not wanted:
        return {}
    found = await redis.smismember(KEY, [m for _, m in wanted])  # type: ignore[misc]
    reasons: dict[bytes, str] = {}
    for (email_hash, member), hit in zip(wanted, found, strict=True):
        if hit:
            reason = "marketing_opt_out" if member.startswith("m:") else "client_opt_out"
            reasons.setdefault(email_hash, reason)
    return reasons
