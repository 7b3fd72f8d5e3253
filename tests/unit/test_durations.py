"""Durations: every well-formed one parses to its seconds; anything else is refused."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import durations

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@given(n=st.integers(1, 10**6), unit=st.sampled_from(sorted(UNITS)))
def test_a_number_and_a_unit_is_that_many_seconds(n: int, unit: str) -> None:
    seconds = n * UNITS[unit]
    if seconds > durations.MAX.total_seconds():
        with pytest.raises(ValueError):
            durations.parse(f"{n}{unit}")
    else:
        assert durations.parse(f" {n}{unit.upper()} ") == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text", ["", "3", "d", "0s", "-1d", "1.5h", "3 d", "3days", "1d2h", "9" * 10 + "s"]
)
def test_anything_else_is_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration such as|more than nothing"):
        durations.parse(text)


@given(st.text(max_size=20))
def test_arbitrary_text_parses_or_raises_value_error(text: str) -> None:
    try:
        value = durations.parse(text)
    except ValueError:
        return
    assert timedelta(0) < value <= durations.MAX
