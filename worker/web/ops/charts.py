"""The geometry of `/ops`'s pictures, as pure functions: a campaign's progress bar by state
and the send-rate chart. The template draws them as inline SVG (no script, no image
request: the page keeps the app's strict Content-Security-Policy)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# The order of a progress bar's segments: done first, then what is still to do.
STATES = ("sent", "suppressed", "failed", "unknown", "cancelled", "deferred", "sending", "pending")


@dataclass(frozen=True)
class Segment:
    """One state's part of a progress bar, in the bar's units."""

    state: str
    count: int
    x: float
    width: float


def progress(counts: Mapping[str, int], *, width: float = 1000) -> list[Segment]:
    """A bar of `width` split by state in STATES order (other states last), zero counts
    left out; empty when there are no invitations."""
    total = sum(counts.values())
    if total <= 0:
        return []
    ordered = [s for s in STATES if s in counts] + sorted(set(counts) - set(STATES))
    segments, x = [], 0.0
    for state in ordered:
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
