"""The field period's calendar: send windows in a recipient's time zone, time zones, and
the instants a campaign starts and closes at. Pure: no clock, no I/O.

A window spec is one or more `DAYS HH:MM-HH:MM` joined by `;`, DAYS being `daily`, a range
(`Mon-Fri`) or a list (`Mon,Wed,Fri`); a range of times includes its start and excludes its
end (`24:00` ends at midnight). Local times are read on the wall clock of the zone, so a
window that falls in an hour daylight saving skips is simply not open that day, and one in
an hour it repeats is open both times.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
EVERY_DAY = frozenset(range(7))
# Days searched for a window's next opening: a week, and a week more for a window whose
# only hour daylight saving skipped this week.
HORIZON_DAYS = 15
_SPAN = re.compile(r"(?P<days>\S+)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})")


class ScheduleError(ValueError):
    """A window spec, time zone or date-time that cannot be used; the text says why."""


@dataclass(frozen=True)
class Span:
    """Some days of the week (0 = Monday) from `start` to `end`, in minutes after midnight."""

    days: frozenset[int]
    start: int
    end: int


@dataclass(frozen=True)
class Window:
    """When messages may start, on the wall clock of each recipient's time zone."""

    spans: tuple[Span, ...]

    def __str__(self) -> str:
        return "; ".join(
            f"{_format_days(s.days)} {_format_minute(s.start)}-{_format_minute(s.end)}"
            for s in self.spans
        )


def parse(spec: str) -> Window:
    """The window of `spec` (`Mon-Fri 09:00-12:00; Sat 10:00-12:00`); ScheduleError
    naming what is wrong: an hour past 24:00, an unknown day, a range that ends where or
    before it starts."""
    parts = [p.strip() for p in spec.split(";")]
    if not any(parts):
        raise ScheduleError("a window is DAYS HH:MM-HH:MM, e.g. Mon-Fri 09:00-17:00")
    spans = []
    for part in parts:
        match = _SPAN.fullmatch(part)
        if match is None:
            raise ScheduleError(f"{part!r} is not DAYS HH:MM-HH:MM, e.g. Mon-Fri 09:00-17:00")
        start = _minute(match["start"])
        end = _minute(match["end"])
        if end <= start:
            raise ScheduleError(
                f"{part!r} is an empty range: it must end after it starts "
                "(a window past midnight is two ranges)"
            )
        spans.append(Span(_days(match["days"]), start, end))
    return Window(tuple(spans))


def _minute(text: str) -> int:
    hours, _, minutes = text.partition(":")
    h, m = int(hours), int(minutes)
    if m > 59 or h > 24 or (h == 24 and m):
        raise ScheduleError(f"{text} is not a time of day (00:00 to 24:00)")
    return h * 60 + m


def _day(name: str) -> int:
    for number, known in enumerate(DAY_NAMES):
        if name.lower() == known.lower():
            return number
    raise ScheduleError(f"{name!r} is not a day: {', '.join(DAY_NAMES)} or daily")


def _days(text: str) -> frozenset[int]:
    if text.lower() == "daily":
        return EVERY_DAY
    days: set[int] = set()
    for item in text.split(","):
        first, dash, last = item.partition("-")
        if not dash:
            days.add(_day(first))
            continue
        a, b = _day(first), _day(last)
        if b <= a:
            raise ScheduleError(
                f"{item!r} is an empty range of days: it runs forward, e.g. Mon-Fri"
            )
        days.update(range(a, b + 1))
    return frozenset(days)


def _format_days(days: frozenset[int]) -> str:
    if days == EVERY_DAY:
        return "daily"
    ordered = sorted(days)
    if len(ordered) >= 3 and ordered[-1] - ordered[0] == len(ordered) - 1:
        return f"{DAY_NAMES[ordered[0]]}-{DAY_NAMES[ordered[-1]]}"
    return ",".join(DAY_NAMES[d] for d in ordered)


def _format_minute(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` (`Europe/Amsterdam`, `UTC`); ScheduleError if there is no
    such zone."""
    if name not in _zone_names():
        raise ScheduleError(f"{name!r} is not a time zone (an IANA name, e.g. Europe/Amsterdam)")
    return ZoneInfo(name)


def is_open(window: Window, tz: ZoneInfo, instant: datetime) -> bool:
    """Whether a message may start at `instant` (aware) in time zone `tz`."""
    local = instant.astimezone(tz)
    minute = local.hour * 60 + local.minute
    weekday = local.weekday()
    return any(weekday in s.days and s.start <= minute < s.end for s in window.spans)


def next_open(window: Window, tz: ZoneInfo, instant: datetime) -> datetime | None:
    """The first moment from `instant` (aware) on when the window is open in `tz`: `instant`
    itself when it is open; None when it never opens (a window that lies wholly in hours
    the zone skips)."""
    if is_open(window, tz, instant):
        return instant
    first_day = instant.astimezone(tz).date()
    candidates: set[datetime] = set()
    for n in range(HORIZON_DAYS):
        day = first_day + timedelta(days=n)
        starts = {s.start for s in window.spans if day.weekday() in s.days}
        for minute in starts:
            wall = datetime.combine(day, time(minute // 60, minute % 60), tz)
            # Both readings of a repeated hour; a skipped one reads as the hour after.
            candidates.update(wall.replace(fold=f).astimezone(UTC) for f in (0, 1))
        candidates.update(_transitions(tz, day))
    opening = [c for c in candidates if c > instant and is_open(window, tz, c)]
    return min(opening) if opening else None


def _transitions(tz: ZoneInfo, day: date) -> list[datetime]:
    """The instants of `day` (local) at which `tz`'s offset changes: a window's range may
    begin there, in the middle, when the clock jumps over its start."""
    begin = datetime.combine(day, time(), tz).astimezone(UTC)
    end = begin + timedelta(hours=26)
    if begin.astimezone(tz).utcoffset() == end.astimezone(tz).utcoffset():
        return []
    low, high = begin, end
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).utcoffset() == low.astimezone(tz).utcoffset():
            low = middle
        else:
            high = middle
    return [high.replace(microsecond=0)]


def local_day(tz: ZoneInfo, instant: datetime) -> date:
    """The calendar day `instant` falls on in `tz`."""
    return instant.astimezone(tz).date()


def next_day(tz: ZoneInfo, instant: datetime) -> datetime:
    """The start of the calendar day after `instant`'s in `tz` (where midnight is skipped,
    the first moment of that day)."""
    tomorrow = local_day(tz, instant) + timedelta(days=1)
    return datetime.combine(tomorrow, time(), tz).astimezone(UTC)


def parse_instant(text: str, tz: ZoneInfo) -> datetime:
    """An ISO 8601 date-time (`2026-03-02T09:00`, `2026-03-02 09:00+01:00`, `...Z`), read
    in `tz` when it has no offset; ScheduleError when it is not one."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ScheduleError(
            f"{text!r} is not an ISO 8601 date-time, e.g. 2026-03-02T09:00 or "
            "2026-03-02T09:00+01:00"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC)


def utc_text(instant: datetime) -> str:
    """`2026-03-02 08:00:00 UTC`: an instant as the commands print it."""
    return f"{instant.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
