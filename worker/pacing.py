"""Pacing rules: how long to wait before retrying a message, and before the next chunk when
the SMTP server pushes back. Pure functions of frozen values; the sender applies them."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import timedelta

from worker.records import Outcome

# The longest pause between chunks however long the server keeps pushing back.
MAX_PUSHBACK_PAUSE = 30.0


def pushed_back(done: Sequence[Outcome]) -> bool:
    """Whether the server asked us to slow down: a 421, or most of a chunk deferred."""
    deferred = [o for o in done if o.state == "deferred"]
    return any(o.smtp_code == 421 for o in deferred) or (
        len(done) > 1 and len(deferred) * 2 >= len(done)
    )


def pause_after_pushback(base_seconds: float, pushback: int) -> float:
    """Seconds to wait before the next chunk after `pushback` pushed-back chunks in a row,
    doubling from `base_seconds` (RETRY_BASE_SECONDS) up to MAX_PUSHBACK_PAUSE."""
    if pushback == 0:
        return 0.0
    return float(min(base_seconds * 2 ** (pushback - 1), MAX_PUSHBACK_PAUSE))


def backoff(base_seconds: float, attempts: int, max_seconds: float) -> timedelta:
    """Exponential backoff with jitter for the attempt that just failed: a random delay in
    the upper half of `base_seconds` (RETRY_BASE_SECONDS) doubled per earlier attempt, the
    doubling stopped at `max_seconds` (RETRY_MAX_DELAY)."""
    # Capped before the power is taken: after a week of retries 2**attempts still fits.
    doublings = min(max(attempts - 1, 0), 64)
    ceiling = min(base_seconds * 2**doublings, max(max_seconds, base_seconds))
    return timedelta(seconds=ceiling / 2 + random.uniform(0, ceiling / 2))  # noqa: S311


def throttled_relays(done: Sequence[Outcome]) -> dict[str, Outcome]:
    """The relays that deferred most of their share of a chunk with the same 4xx: each
    with one of those outcomes. Two messages at least, so one busy mailbox is no sign."""
    by_relay: dict[str, list[Outcome]] = {}
    for o in done:
        if o.relay is not None and o.started:
            by_relay.setdefault(o.relay, []).append(o)
    found: dict[str, Outcome] = {}
    for relay, outcomes in by_relay.items():
        codes: dict[int, list[Outcome]] = {}
        for o in outcomes:
            if o.state == "deferred" and o.smtp_code is not None:
                codes.setdefault(o.smtp_code, []).append(o)
        for same in codes.values():
            if len(same) >= 2 and len(same) * 2 > len(outcomes):
                found[relay] = same[0]
    return found
