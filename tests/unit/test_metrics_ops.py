"""The pure parts of /ops: progress bars and rate charts fit their boxes, password hashes
verify only their password, CSRF tokens only for their user and time."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import passwords
from worker.states import DISPLAY_ORDER
from worker.web.ops import charts
from worker.web.ops.app import CSRF_LIFETIME, Users

STATES = st.sampled_from([*DISPLAY_ORDER, "weird"])


@given(st.dictionaries(STATES, st.integers(0, 10**7)))
def test_a_progress_bar_fills_its_width_in_state_order(counts: dict[str, int]) -> None:
    segments = charts.progress(counts, width=1000)
    if sum(counts.values()) == 0:
        assert segments == []
        return
    assert math.isclose(sum(s.width for s in segments), 1000, abs_tol=0.1 * len(segments))
    assert [s.state for s in segments] == [
        s for s in [*DISPLAY_ORDER, "weird"] if counts.get(s, 0) > 0
    ]
    for before, after in itertools.pairwise(segments):
        assert math.isclose(before.x + before.width, after.x, abs_tol=0.02)


@given(st.lists(st.integers(0, 10**6), max_size=60))
def test_rate_bars_stay_in_the_box_and_the_peak_fills_it(counts: list[int]) -> None:
    chart = charts.rate_chart(counts, bucket_seconds=15, width=400, height=80)
    assert len(chart.bars) == sum(1 for n in counts if n > 0)
    for bar in chart.bars:
        assert bar.x >= 0 and bar.x + bar.width <= 400 + 0.01
        assert bar.y >= 0 and math.isclose(bar.y + bar.height, 80, abs_tol=0.02)
    if chart.bars:
        assert max(b.height for b in chart.bars) == 80
        assert chart.peak == round(max(counts) / 15, 1)
    assert chart.latest == (round(counts[-1] / 15, 1) if counts else 0.0)


def test_summed_adds_campaigns_bucket_by_bucket() -> None:
    assert charts.summed([[1, 2, 3], [10, 0, 5]], 3) == [11, 2, 8]
    assert charts.summed([], 2) == [0, 0]
    assert charts.rate(1, 0) is None and charts.rate(1, 4) == 0.25


@settings(max_examples=10, deadline=None)
@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_a_hash_verifies_its_password_only(password: str, other: str) -> None:
    hashed = passwords.Hash.parse(passwords.hash_password(password, n=2**10))
    assert hashed.verify(password)
    assert hashed.verify(other) == (other == password)


def test_hashes_are_salted_and_never_hold_separators() -> None:
    first, second = (passwords.hash_password("same password", n=2**10) for _ in range(2))
    assert first != second
    assert not {":", ",", "$", " "} & set(first)


def test_csrf_tokens_belong_to_one_user_and_expire() -> None:
    users = Users(
        {u: passwords.Hash.parse(passwords.hash_password(u, n=2**10)) for u in ("anna", "bob")}
    )
    now = 1_800_000_000.0
    token = users.csrf_token("anna", now=now)
    assert users.csrf_ok("anna", token, now=now + CSRF_LIFETIME)
    assert not users.csrf_ok("anna", token, now=now + CSRF_LIFETIME + 1)
    assert not users.csrf_ok("anna", token, now=now - 10)  # from the future
    assert not users.csrf_ok("bob", token, now=now)
    issued, _, mac = token.partition(".")
    assert not users.csrf_ok("anna", f"{int(issued) + 1}.{mac}", now=now)
    for bad in ("", ".", "abc", f"{issued}.", f"x{token}"):
        assert not users.csrf_ok("anna", bad, now=now)


@given(st.integers(0, 200), st.integers(0, 255))
def test_a_csrf_token_with_any_byte_changed_is_refused(position: int, value: int) -> None:
    users = Users({"anna": passwords.Hash.parse(passwords.hash_password("pw", n=2**10))})
    token = users.csrf_token("anna", now=1_800_000_000.0)
    index = position % len(token)
    changed = token[:index] + chr(value) + token[index + 1 :]
    if changed != token:
        assert not users.csrf_ok("anna", changed, now=1_800_000_000.0)


@pytest.mark.parametrize(
    "text",
    ["scrypt.1024.8.1", "bcrypt.1024.8.1.a.b", "scrypt.1024.8.1.!!.??", "scrypt.1024.99.1.a.b"],
)
def test_hashes_that_are_not_ours_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        passwords.Hash.parse(text)
