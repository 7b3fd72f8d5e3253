"""The geometry of `/ops`'s pictures, as pure functions: a campaign's progress bar by state,
the send-rate chart of all campaigns and each campaign's send-rate sparkline. The template
draws them as inline SVG (no script, no image request: the page keeps the app's strict
Content-Security-Policy)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from worker.states import in_display_order


@dataclass(frozen=True)
class Segment:
    """One state's part of a progress bar, in the bar's units."""

    state: str
    count: int
    x: float
    width: float


def progress(counts: Mapping[str, int], *, width: float = 1000) -> list[Segment]:
    """A bar of `width` split by state in DISPLAY_ORDER (other states last), zero counts
    left out; empty when there are no invitations."""
    total = sum(counts.values())
    if total <= 0:
        return []
    segments, x = [], 0.0
    for state in in_display_order(counts):
        n = counts[state]
        if n <= 0:
            continue
        part = width * n / total
        segments.append(Segment(state, n, round(x, 2), round(part, 2)))
        x += part
    return segments


@dataclass(frozen=True)
class Bar:
    """One bucket of the rate chart: its rectangle, and the rate it stands for."""

    x: float
    y: float
    width: float
    height: float
    rate: float


@dataclass(frozen=True)
class RateChart:
    """The send-rate chart: bars in a box of `width` by `height`, and the peak rate (msg/s)."""

    width: float
    height: float
    bars: tuple[Bar, ...]
    peak: float
    latest: float


def rate_chart(
    counts: Sequence[int], *, bucket_seconds: float, width: float = 400, height: float = 80
) -> RateChart:
    """Bars for per-bucket send counts (oldest first), scaled so the peak fills the box;
    a gap of one unit between bars. An empty bucket has no bar."""
    rates = [n / bucket_seconds for n in counts]
    peak = max(rates, default=0.0)
    step = width / max(len(rates), 1)
    bars = tuple(
        Bar(
            x=round(i * step, 2),
            y=round(height - height * r / peak, 2),
            width=round(max(step - 1, 0.5), 2),
            height=round(height * r / peak, 2),
            rate=round(r, 1),
        )
        for i, r in enumerate(rates)
        if r > 0
    )
    return RateChart(width, height, bars, round(peak, 1), round(rates[-1], 1) if rates else 0.0)


@dataclass(frozen=True)
class Tick:
    """A mark of a time axis: where it is (in the chart's units) and what it says."""

    x: float
    label: str


@dataclass(frozen=True)
class Sparkline:
    """A campaign's send rate over the whole window as one line (a point per bucket, zero
    buckets included, so a short burst is a peak on a baseline, never a lone bar), with the
    area under it, the time axis's ticks and the peak and latest rates (msg/s)."""

    width: float
    height: float
    line: str
    area: str
    ticks: tuple[Tick, ...]
    peak: float
    latest: float


def sparkline(
    counts: Sequence[int],
    *,
    bucket_seconds: float,
    width: float = 1000,
    height: float = 60,
    margin: float = 3,
) -> Sparkline:
    """The sparkline of per-bucket send counts (oldest first, the last one now): points
    from the left edge (the window's start) to the right (now), the peak `margin` below the
    top, zero `margin` above the bottom; no line when nothing was sent. Ticks at the start,
    the middle and the end of the window, labelled in minutes before now."""
    rates = [n / bucket_seconds for n in counts]
    peak = max(rates, default=0.0)
    span = len(rates) * bucket_seconds
    ticks = tuple(
        Tick(round(width * i / 2, 2), "now" if i == 2 else f"\u2212{_minutes(span * (2 - i) / 2)}")
        for i in range(3)
    )
    if peak <= 0:
        return Sparkline(width, height, "", "", ticks, 0.0, 0.0)
    step = width / max(len(rates) - 1, 1)
    usable = height - 2 * margin
    points = [
        (round(i * step, 2), round(height - margin - usable * r / peak, 2))
        for i, r in enumerate(rates)
    ]
    line = " ".join(f"{x},{y}" for x, y in points)
    base = round(height - margin, 2)
    area = f"{points[0][0]},{base} {line} {points[-1][0]},{base}"
    return Sparkline(width, height, line, area, ticks, round(peak, 1), round(rates[-1], 1))


def _minutes(seconds: float) -> str:
    """A span before now as the axis says it: "10 min", "2.5 min", "45 s"."""
    if seconds < 60:
        return f"{seconds:g} s"
    return f"{seconds / 60:g} min"


def summed(series: Sequence[Sequence[int]], length: int) -> list[int]:
    """Bucket-wise sums of several campaigns' series of `length` buckets."""
    total = [0] * length
    for one in series:
        for i, n in enumerate(one[:length]):
            total[i] += n
    return total


def rate(numerator: int, denominator: int) -> float | None:
    """A ratio, or None when the denominator is zero."""
    return numerator / denominator if denominator > 0 else None
