"""`survey-worker status CAMPAIGN_ID --watch`: follow a campaign until it ends.

On a terminal a tqdm progress bar (invitations decided out of all, the rate, the counts
per state) is redrawn in place; otherwise one plain line is printed whenever something
changed, or a JSON object per line with `--json`. The ledger is read once per INTERVAL;
the rate is that of decisions over the last RATE_WINDOW seconds. Ctrl-C stops watching
(exit status 0); the campaign goes on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Never, Protocol, TextIO

from tqdm import tqdm

from worker import campaigns
from worker.db import Conn
from worker.states import ENDED_STATUSES, decided, in_display_order

INTERVAL = 1.0
RATE_WINDOW = 30.0


def counts_text(counts: Mapping[str, int]) -> str:
    """`sent 10, suppressed 2, pending 5`: non-zero states in a fixed order."""
    return ", ".join(f"{s} {counts[s]}" for s in in_display_order(counts) if counts[s])


def line(report: campaigns.StatusReport, rate: float | None, now: datetime) -> str:
    """One plain line about the campaign now."""
    done, total = decided(report.counts), report.total
    share = f" ({100 * done // total} %)" if total else ""
    because = f" ({report.status_reason})" if report.status_reason else ""
    speed = f", {rate:.1f}/s" if rate is not None else ""
    return (
        f"{now:%Y-%m-%dT%H:%M:%SZ} campaign {report.campaign_id} {report.status}{because}: "
        f"{done}/{total} done{share}{speed}; {counts_text(report.counts) or 'no invitations'}"
    )


class RateMeter:
    """Decisions per second over the last `window` seconds of observations."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._seen: deque[tuple[float, int]] = deque()

    def add(self, at: float, done: int) -> float | None:
        """Note `done` at time `at`; the rate since the oldest note in the window, or None
        before there are two."""
        self._seen.append((at, done))
        while len(self._seen) > 2 and at - self._seen[1][0] >= self.window:
            self._seen.popleft()
        first_at, first_done = self._seen[0]
        return (done - first_done) / (at - first_at) if at > first_at else None


class Display(Protocol):
    def show(self, report: campaigns.StatusReport, rate: float | None) -> None: ...

    def close(self, report: campaigns.StatusReport | None) -> None: ...


class Bar:
    """A tqdm bar redrawn in place on a terminal."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._bar: tqdm[Never] | None = None

    def show(self, report: campaigns.StatusReport, rate: float | None) -> None:
        done = decided(report.counts)
        because = f" ({report.status_reason})" if report.status_reason else ""
        title = f"campaign {report.campaign_id} {report.status}{because}"
        if self._bar is None:
            self._bar = tqdm(
                desc=title,
                total=report.total,
                initial=done,
                unit="inv",
                file=self._out,
                dynamic_ncols=True,
                # Our own rate (from the ledger), not tqdm's (from this process's updates);
                # tqdm puts ", " before the postfix.
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix}",
            )
        bar = self._bar
        bar.total = report.total
        bar.n = done
        bar.set_description_str(title, refresh=False)
        speed = f"{rate:.1f}/s; " if rate is not None else ""
        bar.set_postfix_str(speed + counts_text(report.counts), refresh=False)
        bar.refresh()

    def close(self, report: campaigns.StatusReport | None) -> None:
        if self._bar is not None:
            self._bar.close()
        if report is not None and report.status in ENDED_STATUSES:
            print(line(report, None, datetime.now(UTC)), file=self._out, flush=True)


class Lines:
    """A plain line whenever the campaign changed (not a terminal)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._last: tuple[str, dict[str, int]] | None = None

    def show(self, report: campaigns.StatusReport, rate: float | None) -> None:
        key = (report.status, report.counts)
        if key != self._last:
            self._last = key
            print(line(report, rate, datetime.now(UTC)), file=self._out, flush=True)

    def close(self, report: campaigns.StatusReport | None) -> None:
        return None


class JsonLines:
    """`status --json`'s object, with `rate`, whenever the campaign changed."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._last: tuple[str, dict[str, int]] | None = None

    def show(self, report: campaigns.StatusReport, rate: float | None) -> None:
        key = (report.status, report.counts)
        if key != self._last:
            self._last = key
            data = {**report.as_json(), "rate": None if rate is None else round(rate, 1)}
            print(json.dumps(data), file=self._out, flush=True)

    def close(self, report: campaigns.StatusReport | None) -> None:
        return None


def display_for(out: TextIO, *, as_json: bool) -> Display:
    """JSON lines if asked, a bar on a terminal, plain lines otherwise."""
    if as_json:
        return JsonLines(out)
    return Bar(out) if out.isatty() else Lines(out)


async def follow(
    conn: Conn,
    campaign_id: int,
    display: Display,
    *,
    interval: float = INTERVAL,
    clock: Callable[[], float] = time.monotonic,
) -> campaigns.StatusReport:
    """Show the campaign every `interval` seconds until it ended; its last report.
    NotFound when there is no such campaign.

    Counting a campaign of millions of invitations takes a while: the watch then reads
    less often, so that it spends at most a fifth of the time counting.
    """
    meter = RateMeter()
    report: campaigns.StatusReport | None = None
    try:
        while True:
            started = clock()
            report = await campaigns.status_report(conn, campaign_id)
            now = clock()
            display.show(report, meter.add(now, decided(report.counts)))
            if report.status in ENDED_STATUSES:
                return report
            await asyncio.sleep(max(interval, 4 * (now - started)))
    finally:
        display.close(report)
