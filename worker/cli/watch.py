"""`survey-worker status CAMPAIGN_ID --watch`: follow a campaign until it ends.

On a terminal a tqdm progress bar (invitations decided out of all, the rate, the counts
per state) is redrawn in place; otherwise one plain line is printed whenever something
changed, or a JSON object per line with `--json`. The ledger is read once per INTERVAL,
with the workers' send journals in Redis, so that a message counts as sent once the server
accepted it, not when its chunk of CHUNK_SIZE is recorded; and with them the state of the
campaign's relays: while every relay of its route is in trouble, "waiting for relay NAME:
REASON (REPLY) since TIME" is shown. The rate is that of decisions over the last
RATE_WINDOW seconds, so it stays steady while the sending does. Ctrl-C stops watching
(exit status 0); the campaign goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Never, Protocol, TextIO

from redis.asyncio import Redis
from tqdm import tqdm

from worker import campaigns, queue
from worker.db import Conn
from worker.relay_config import Relay
from worker.relays import waiting_lines
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


def waiting(report: campaigns.StatusReport) -> list[str]:
    """What the campaign waits for: `scheduled for TIME` or `waiting for the window; next
    send TIME` (its field period), and `waiting for relay NAME: REASON (REPLY) since TIME`
    for each relay it waits for; none while it does not wait."""
    period = report.schedule.waiting_line()
    relays = waiting_lines(report.relays) if report.waiting_for_relay else []
    return [period, *relays] if period else relays


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
        self._waits: list[str] = []

    def show(self, report: campaigns.StatusReport, rate: float | None) -> None:
        done = decided(report.counts)
        because = f" ({report.status_reason})" if report.status_reason else ""
        waits = waiting(report)
        title = f"campaign {report.campaign_id} {report.status}{because}"
        if report.waiting_for_relay:
            title += ", waiting for relay"
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
        if waits != self._waits:
            self._waits = waits
            for text in waits:
                # Above the bar, which tqdm draws again below.
                tqdm.write(text, file=self._out)

    def close(self, report: campaigns.StatusReport | None) -> None:
        if self._bar is not None:
            self._bar.close()
        if report is not None and report.status in ENDED_STATUSES:
            print(line(report, None, datetime.now(UTC)), file=self._out, flush=True)


class Lines:
    """A plain line whenever the campaign changed (not a terminal), and under it the
    relays it waits for."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._last: tuple[str, dict[str, int], list[str]] | None = None

    def show(self, report: campaigns.StatusReport, rate: float | None) -> None:
        waits = waiting(report)
        key = (report.status, report.counts, waits)
        if key != self._last:
            self._last = key
            text = [line(report, rate, datetime.now(UTC)), *(f"  {w}" for w in waits)]
            print("\n".join(text), file=self._out, flush=True)

    def close(self, report: campaigns.StatusReport | None) -> None:
        return None


class JsonLines:
    """`status --json`'s object, with `rate`, whenever the campaign or its relays
    changed."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._last: tuple[str, dict[str, int], list[dict[str, Any]]] | None = None

    def show(self, report: campaigns.StatusReport, rate: float | None) -> None:
        key = (report.status, report.counts, report.relays)
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
    redis_url: str,
    relays: Sequence[Relay],
    interval: float = INTERVAL,
    clock: Callable[[], float] = time.monotonic,
) -> campaigns.StatusReport:
    """Show the campaign, with the state of its route's `relays` as the workers published
    it in the Redis at `redis_url`, every `interval` seconds until it ended; its last
    report. NotFound when there is no such campaign.

    Counting a campaign of millions of invitations takes a while: the watch then reads
    less often, so that it spends at most a fifth of the time counting. While Redis does
    not answer, the relays' state is "unknown", the counts are the ledger's (by chunk) and
    the watch goes on.
    """
    meter = RateMeter()
    report: campaigns.StatusReport | None = None
    jobs = queue.LazyQueue(redis_url)
    try:
        while True:
            started = clock()
            redis = await _redis(jobs)
            report = await campaigns.with_relays(
                await campaigns.live_report(conn, redis, campaign_id), redis, relays
            )
            now = clock()
            display.show(report, meter.add(now, decided(report.counts)))
            if report.status in ENDED_STATUSES:
                return report
            await asyncio.sleep(max(interval, 4 * (now - started)))
    finally:
        display.close(report)
        await jobs.close()


async def _redis(jobs: queue.LazyQueue) -> Redis | None:
    """The watch's Redis, or None while it does not answer (then the relays are "unknown"
    and the counts the ledger's; it is asked again at the next look)."""
    with contextlib.suppress(*queue.ERRORS):
        return await jobs.get()
    return None
