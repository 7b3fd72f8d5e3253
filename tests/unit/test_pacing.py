"""The pure pacing rules: retry backoff, slowing down on pushback, the shared rate's windows."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from worker import ratelimit
from worker.pacing import (
    MAX_PUSHBACK_PAUSE,
    backoff,
    pause_after_pushback,
    pushed_back,
    throttled_relays,
)
from worker.records import Outcome

BASE_SECONDS = 2.0


@given(attempts=st.integers(min_value=1, max_value=30))
def test_backoff_doubles_per_attempt_with_jitter_in_the_upper_half(attempts: int) -> None:
    ceiling = 2.0 * 2 ** (attempts - 1)
    delay = backoff(BASE_SECONDS, attempts, max_seconds=1e12)
    assert timedelta(seconds=ceiling / 2) <= delay <= timedelta(seconds=ceiling)


@given(
    attempts=st.integers(min_value=1, max_value=10_000),
    max_seconds=st.floats(min_value=0.001, max_value=86_400),
)
def test_backoff_stops_doubling_at_the_max_delay(attempts: int, max_seconds: float) -> None:
    ceiling = max(max_seconds, BASE_SECONDS)
    delay = backoff(BASE_SECONDS, attempts, max_seconds)
    assert delay <= timedelta(seconds=ceiling)
    assert delay >= timedelta(seconds=min(BASE_SECONDS * 2 ** min(attempts - 1, 64), ceiling) / 2)


def test_a_relay_deferring_most_of_its_share_with_one_code_is_throttling() -> None:
    def on(relay: str, state: str, code: int) -> Outcome:
        return Outcome(1, state, smtp_code=code, relay=relay)  # type: ignore[arg-type]

    done = [
        on("esp", "deferred", 451),
        on("esp", "deferred", 451),
        on("esp", "sent", 250),
        on("backup", "deferred", 451),
        on("backup", "sent", 250),
        on("backup", "sent", 250),
        on("mixed", "deferred", 451),
        on("mixed", "deferred", 452),
        on("mixed", "deferred", 450),
    ]
    assert set(throttled_relays(done)) == {"esp"}
    assert throttled_relays([on("esp", "deferred", 451)]) == {}
    given_back = Outcome(1, "deferred", smtp_code=451, relay="esp", started=False)
    assert throttled_relays([given_back, given_back]) == {}


def test_a_421_or_a_mostly_deferred_chunk_is_pushback() -> None:
    sent = Outcome(1, "sent", smtp_code=250)
    busy = Outcome(2, "deferred", smtp_code=421)
    later = Outcome(3, "deferred", smtp_code=451)
    assert pushed_back([sent, sent, sent, busy])
    assert pushed_back([sent, later, later])
    assert not pushed_back([sent, sent, later])
    assert not pushed_back([later])
    assert not pushed_back([])


def test_the_pause_doubles_while_the_server_pushes_back_and_is_capped() -> None:
    pauses = [pause_after_pushback(BASE_SECONDS, n) for n in range(12)]
    assert pauses[:4] == [0.0, 2.0, 4.0, 8.0]
    assert max(pauses) == MAX_PUSHBACK_PAUSE
    assert pauses == sorted(pauses)


@given(
    rate=st.floats(min_value=0.01, max_value=100_000),
    asked=st.integers(min_value=1, max_value=10_000),
    before=st.integers(min_value=0, max_value=200_000),
)
def test_a_window_never_grants_more_than_its_allowance(
    rate: float, asked: int, before: int
) -> None:
    allowance = int(rate * ratelimit.window_length(rate))
    got = ratelimit.granted(rate, asked, before + asked)
    assert 0 <= got <= asked
    assert got == max(0, min(asked, allowance - before))
    assert before + got <= max(allowance, before)


def test_slow_rates_count_over_longer_windows() -> None:
    assert ratelimit.window_length(50) == 1
    assert ratelimit.window_length(0.25) == 4
