"""The field period's calendar (worker.schedule): window specs, openings, time zones."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import schedule
from worker.schedule import ScheduleError, Span, Window

ZONES = [
    "UTC",
    "Europe/Amsterdam",
    "America/New_York",
    "America/Santiago",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
]

spans = st.builds(
    lambda days, a, b: Span(frozenset(days), min(a, b), max(a, b) + (a == b)),
    st.sets(st.integers(0, 6), min_size=1),
    st.integers(0, 24 * 60 - 1),
    st.integers(0, 24 * 60),
)
windows = st.builds(lambda s: Window(tuple(s)), st.lists(spans, min_size=1, max_size=4))
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
)


@given(windows)
def test_a_window_round_trips_through_its_spec(window: Window) -> None:
    assert schedule.parse(str(window)) == window


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("daily 09:00-17:00", "daily 09:00-17:00"),
        ("mon-fri 9:00-12:00;MON-FRI 14:00-17:00", "Mon-Fri 09:00-12:00; Mon-Fri 14:00-17:00"),
        ("Mon,Wed,Fri 10:00-16:00", "Mon,Wed,Fri 10:00-16:00"),
        ("Sat-Sun 00:00-24:00", "Sat,Sun 00:00-24:00"),
        ("Mon-Wed,Sat 08:30 - 09:45", "Mon,Tue,Wed,Sat 08:30-09:45"),
    ],
)
def test_specs_read_as_written(spec: str, expected: str) -> None:
    assert str(schedule.parse(spec)) == expected


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("Mon-Fri 09:00-25:00", "25:00 is not a time of day"),
        ("Mon-Fri 09:60-10:00", "09:60 is not a time of day"),
        ("Mon-Fry 09:00-17:00", "'Fry' is not a day"),
        ("Mon-Fri 17:00-09:00", "empty range"),
        ("Mon-Fri 09:00-09:00", "empty range"),
        ("Fri-Mon 09:00-17:00", "empty range of days"),
        ("", "a window is DAYS HH:MM-HH:MM"),
        ("Mon-Fri 09:00-12:00;", "'' is not DAYS"),
        ("09:00-17:00", "is not DAYS HH:MM-HH:MM"),
        ("Mon-Fri 9-17", "is not DAYS HH:MM-HH:MM"),
    ],
)
def test_malformed_specs_are_refused_saying_why(spec: str, says: str) -> None:
    with pytest.raises(ScheduleError, match=re.escape(says)):
        schedule.parse(spec)


@given(
    st.from_regex(r"[A-Za-z0-9:;, -]{0,30}", fullmatch=True),
)
def test_any_text_parses_or_is_refused_with_a_reason(spec: str) -> None:
    try:
        window = schedule.parse(spec)
    except ScheduleError as e:
        assert str(e)
    else:
        assert schedule.parse(str(window)) == window


@settings(max_examples=300, deadline=None)
@given(windows, st.sampled_from(ZONES), instants)
def test_next_open_is_open_and_nothing_before_it_is(
    window: Window, name: str, instant: datetime
) -> None:
    tz = schedule.zone(name)
    opening = schedule.next_open(window, tz, instant)
    assert opening is not None
    assert opening >= instant
    assert schedule.is_open(window, tz, opening)
    # Sampled: every minute boundary in the first two hours, then evenly spaced points.
    gap = opening - instant
    points = [instant + timedelta(minutes=m) for m in range(120)]
    points += [instant + gap * (k / 200) for k in range(200)]
    points.append(opening - timedelta(seconds=1))
    for point in points:
        if instant <= point < opening:
            assert not schedule.is_open(window, tz, point), point


def test_a_window_in_the_hour_daylight_saving_skips_is_not_open_that_day() -> None:
    amsterdam = schedule.zone("Europe/Amsterdam")
    window = schedule.parse("Sun 02:00-02:30")
    # 2026-03-29 02:00 CET does not exist: the clocks go from 02:00 to 03:00.
    before = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
    opening = schedule.next_open(window, amsterdam, before)
    assert opening == datetime(2026, 4, 5, 0, 0, tzinfo=UTC)


def test_a_window_straddling_the_skipped_hour_opens_when_the_clock_jumps() -> None:
    amsterdam = schedule.zone("Europe/Amsterdam")
    window = schedule.parse("Sun 02:30-04:00")
    before = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
    # 03:00 CEST, the first moment of the window that day.
    assert schedule.next_open(window, amsterdam, before) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_the_repeated_hour_is_open_both_times() -> None:
    amsterdam = schedule.zone("Europe/Amsterdam")
    window = schedule.parse("Sun 02:00-02:30")
    # 2026-10-25: 02:00-03:00 is lived twice (CEST, then CET).
    first = datetime(2026, 10, 25, 0, 0, tzinfo=UTC)
    assert schedule.is_open(window, amsterdam, first)
    after_first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert schedule.next_open(window, amsterdam, after_first) == datetime(
        2026, 10, 25, 1, 0, tzinfo=UTC
    )


def test_zones_twenty_five_hours_apart() -> None:
    noon_utc = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    kiritimati = schedule.zone("Pacific/Kiritimati")
    pago_pago = schedule.zone("Pacific/Pago_Pago")
    assert noon_utc.astimezone(kiritimati).hour == 2
    assert noon_utc.astimezone(pago_pago).hour == 1
    window = schedule.parse("daily 02:00-03:00")
    assert schedule.is_open(window, kiritimati, noon_utc)
    assert not schedule.is_open(window, pago_pago, noon_utc)
    assert schedule.next_open(window, pago_pago, noon_utc) == noon_utc + timedelta(hours=1)


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "Europe/", "../etc/passwd", "utc+1"])
def test_unknown_zones_are_refused(name: str) -> None:
    with pytest.raises(ScheduleError, match="is not a time zone"):
        schedule.zone(name)


def test_next_day_and_local_day() -> None:
    tz = schedule.zone("America/New_York")
    instant = datetime(2026, 12, 8, 3, 0, tzinfo=UTC)  # 22:00 on the 7th in New York
    assert schedule.local_day(tz, instant).isoformat() == "2026-12-07"
    assert schedule.next_day(tz, instant) == datetime(2026, 12, 8, 5, 0, tzinfo=UTC)


def test_instants_without_an_offset_are_read_in_the_zone() -> None:
    tz = schedule.zone("Europe/Amsterdam")
    assert schedule.parse_instant("2026-12-08T09:00", tz) == datetime(2026, 12, 8, 8, 0, tzinfo=UTC)
    assert schedule.parse_instant("2026-12-08T09:00Z", tz) == datetime(
        2026, 12, 8, 9, 0, tzinfo=UTC
    )
    assert schedule.parse_instant("2026-12-08 09:00+02:00", tz) == datetime(
        2026, 12, 8, 7, 0, tzinfo=UTC
    )
    with pytest.raises(ScheduleError, match="not an ISO 8601 date-time"):
        schedule.parse_instant("next tuesday", tz)
