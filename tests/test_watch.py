"""`survey-worker status CAMPAIGN_ID --watch`, run as the installed command while a real
worker process sends the campaign: plain lines when stdout is not a terminal, a redrawn
progress bar on one (a pseudo-terminal), JSON lines with --json, and Ctrl-C exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import signal
import struct
import sys
import termios
from datetime import UTC, datetime

import asyncpg

from tests.support.pipeline import add_client, csv_of, launch, run_workers
from tests.support.web import ROOT, cli, cli_environment, start_cli
from worker.campaigns import StatusReport
from worker.cli import watch as watching
from worker.settings import Settings

LINE = re.compile(r"campaign (\d+) (\w+)(?: \(\w+\))?: (\d+)/(\d+) done")


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


async def test_watch_follows_a_campaign_a_worker_sends_until_it_completes(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    await add_client(pg, "acme")
    emails = [f"person{i}@example.com" for i in range(60)]
    report = await launch(pg, settings, csv_of(*emails))
    watch = await start_cli(settings, "status", str(report.campaign_id), "--watch")
    assert watch.stdout is not None
    first = await asyncio.wait_for(watch.stdout.readline(), 60)
    assert f"campaign {report.campaign_id} running: 0/60 done (0 %)" in first.decode()
    # 20 messages a second in chunks of 5: three seconds or so, the watch reads every one.
    worker = await start_cli(settings, "worker", env={"SEND_RATE": "20", "CHUNK_SIZE": "5"})
    try:
        rest, stderr = await asyncio.wait_for(watch.communicate(), 90)
    finally:
        await stop(worker)
        await stop(watch)
    assert watch.returncode == 0, stderr.decode()
    lines = [first.decode().strip(), *rest.decode().splitlines()]
    progress = [LINE.search(x) for x in lines]
    assert all(progress), lines
    done = [int(m.group(3)) for m in progress if m]
    assert done == sorted(done) and done[-1] == 60
    assert len(set(done)) >= 3, lines  # it was seen moving, not only before and after
    assert re.search(r"completed: 60/60 done \(100 %\)(, [\d.]+/s)?; sent 60$", lines[-1])
    assert any(re.search(r"done \(\d+ %\), \d+\.\d/s;", x) for x in lines[1:])
    assert "\r" not in rest.decode()  # no bar outside a terminal


async def test_watch_with_json_prints_status_objects_with_the_rate(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    await add_client(pg, "acme")
    report = await launch(pg, settings, csv_of("ann@example.com", "bob@example.com"))
    await run_workers(settings)
    result = await cli(settings, "status", str(report.campaign_id), "--watch", "--json")
    assert result.code == 0, result.stderr
    (only,) = [json.loads(x) for x in result.stdout.splitlines()]
    assert only["status"] == "completed"
    assert only["counts"] == {"sent": 2}
    assert only["rate"] is None  # one look: no rate yet


async def test_ctrl_c_stops_watching_with_exit_status_0(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    await add_client(pg, "acme")
    report = await launch(pg, settings, csv_of("ann@example.com"), enqueue=False)
    await pg.execute("UPDATE campaigns SET status = 'paused' WHERE id = $1", report.campaign_id)
    watch = await start_cli(settings, "status", str(report.campaign_id), "--watch", ctrl_c=True)
    try:
        assert watch.stdout is not None
        first = await asyncio.wait_for(watch.stdout.readline(), 60)
        assert "paused: 0/1 done" in first.decode()
        watch.send_signal(signal.SIGINT)
        rest, stderr = await asyncio.wait_for(watch.communicate(), 30)
    finally:
        await stop(watch)
    assert watch.returncode == 0, stderr.decode()
    assert "Traceback" not in stderr.decode() and "Aborted" not in stderr.decode()
    assert rest == b""


async def test_an_unknown_campaign_is_one_line_and_exit_status_1(settings: Settings) -> None:
    result = await cli(settings, "status", "999999", "--watch")
    assert result.code == 1
    assert result.stderr.strip().splitlines()[-1] == "Error: no campaign 999999"


async def test_on_a_terminal_a_progress_bar_is_drawn(pg: asyncpg.Pool, settings: Settings) -> None:
    await add_client(pg, "acme")
    report = await launch(pg, settings, csv_of("ann@example.com", "bob@example.com"))
    await run_workers(settings)
    leader, follower = os.openpty()
    # A terminal of 120 columns by 30 lines (a fresh pseudo-terminal has no size).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            "status",
            str(report.campaign_id),
            "--watch",
            env=cli_environment(settings),
            cwd=ROOT,
            stdout=follower,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
        os.close(follower)
        follower = -1
        output = b""
        with contextlib.suppress(OSError):  # EIO once everything was read
            while chunk := os.read(leader, 65536):
                output += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert process.returncode == 0, stderr.decode()
    text = output.decode()
    assert "\r" in text  # drawn in place
    assert f"campaign {report.campaign_id} completed: 100%|" in text
    assert "█" in text and "| 2/2, sent 2" in text
    assert text.rstrip().endswith("completed: 2/2 done (100 %); sent 2")


def test_a_line_names_the_campaign_its_progress_rate_and_counts() -> None:
    report = StatusReport(
        7, "paused", {"pending": 380, "sent": 110, "suppressed": 10}, {}, "complaint_rate", {}, []
    )
    at = datetime(2026, 11, 30, 4, 33, 8, tzinfo=UTC)
    assert watching.line(report, 35.24, at) == (
        "2026-11-30T04:33:08Z campaign 7 paused (complaint_rate): 120/500 done (24 %), "
        "35.2/s; sent 110, suppressed 10, pending 380"
    )
    empty = StatusReport(8, "completed", {}, {}, None, {}, [])
    assert watching.line(empty, None, at).endswith("completed: 0/0 done; no invitations")


def test_the_rate_is_over_the_last_window_of_observations() -> None:
    meter = watching.RateMeter(window=10)
    assert meter.add(0, 0) is None
    assert meter.add(1, 50) == 50
    assert meter.add(2, 150) == 75
    for t in range(3, 30):
        rate = meter.add(t, 150 + 10 * (t - 2))
    assert rate is not None and abs(rate - 10) < 1e-9  # the burst left the window
