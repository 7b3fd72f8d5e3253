"""`survey-worker status CAMPAIGN_ID --watch`, run as the installed command while a real
worker process sends the campaign: plain lines when stdout is not a terminal, a redrawn
progress bar on one (a pseudo-terminal), JSON lines with --json, Ctrl-C exits 0, and the
relay a campaign waits for while its relay is down."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import json
import os
import re
import signal
import struct
import sys
import termios
from dataclasses import replace
from datetime import UTC, datetime

import asyncpg

from tests.support.pipeline import add_client, csv_of, launch, received_by, run_workers
from tests.support.smtp import RecordingHandler, start_smtp_server
from tests.support.web import ROOT, cli, cli_environment, start_cli
from worker.campaigns import ScheduleReport, StatusReport
from worker.cli import watch as watching
from worker.dev import embedded
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
    # The worker published its relay's state at start: ok, and nothing waits for it.
    assert [(r["name"], r["state"]) for r in only["relays"]] == [("default", "ok")]
    assert only["waiting_for_relay"] is False


async def readline(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    return (await asyncio.wait_for(process.stdout.readline(), 60)).decode()


async def test_watch_shows_the_relay_a_campaign_waits_for_until_it_is_back(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    port = embedded.free_port()  # no relay listens there yet
    settings = settings.model_copy(update={"smtp_port": port})
    await add_client(pg, "acme")
    emails = [f"person{i}@example.com" for i in range(6)]
    report = await launch(pg, settings, csv_of(*emails))
    worker = await start_cli(settings, "worker")
    watch = await start_cli(settings, "status", str(report.campaign_id), "--watch")
    follow = await start_cli(settings, "status", str(report.campaign_id), "--watch", "--json")
    try:
        seen = [await readline(watch)]
        while "waiting for relay" not in seen[-1]:
            seen.append(await readline(watch))
        assert LINE.search(seen[-2]) and "running: 0/6 done" in seen[-2], seen
        assert re.fullmatch(
            r"  waiting for relay default: unreachable \(.+\) since "
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00\n",
            seen[-1],
        ), seen
        objects = [json.loads(await readline(follow))]
        while not objects[-1]["waiting_for_relay"]:
            objects.append(json.loads(await readline(follow)))
        [relay] = objects[-1]["relays"]
        assert (relay["name"], relay["state"], relay["reason"]) == (
            "default",
            "trouble",
            "unreachable",
        )
        assert relay["reply"] and relay["since"]
        await stop(follow)
        handler = RecordingHandler()
        async with start_smtp_server(handler, port=port):
            rest, stderr = await asyncio.wait_for(watch.communicate(), 90)
    finally:
        await stop(worker)
        await stop(watch)
        await stop(follow)
    assert watch.returncode == 0, stderr.decode()
    lines = rest.decode().splitlines()
    # Back: the next line has no waiting under it, and the campaign completes.
    assert lines and not lines[0].startswith("  "), lines
    assert not any("waiting for relay" in x for x in lines), lines
    assert re.search(r"completed: 6/6 done \(100 %\)(, [\d.]+/s)?; sent 6$", lines[-1]), lines
    assert received_by(handler.messages) == dict.fromkeys(emails, 1)


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


def waiting_report(*, waiting: bool) -> StatusReport:
    relay = {
        "name": "esp",
        "state": "trouble" if waiting else "ok",
        "reason": "auth_failed" if waiting else None,
        "reply": "535 5.7.8 Authentication credentials invalid" if waiting else None,
        "since": "2026-11-30T04:30:00+00:00",
    }
    return StatusReport(
        7, "running", {"pending": 5}, {}, None, {}, [], relays=[relay], waiting_for_relay=waiting
    )


WAITING = (
    "waiting for relay esp: auth_failed (535 5.7.8 Authentication credentials invalid) "
    "since 2026-11-30T04:30:00+00:00"
)


def test_plain_lines_show_the_relay_waited_for_once_and_again_when_it_changes() -> None:
    out = io.StringIO()
    lines = watching.Lines(out)
    lines.show(waiting_report(waiting=True), None)
    lines.show(waiting_report(waiting=True), None)
    lines.show(waiting_report(waiting=False), None)
    shown = out.getvalue().splitlines()
    assert len(shown) == 3, shown
    assert shown[0].endswith("campaign 7 running: 0/5 done (0 %); pending 5")
    assert shown[1] == f"  {WAITING}"
    assert shown[2].endswith("campaign 7 running: 0/5 done (0 %); pending 5")


def test_the_bar_says_it_waits_and_writes_the_relay_above_itself() -> None:
    out = io.StringIO()
    bar = watching.Bar(out)
    bar.show(waiting_report(waiting=True), None)
    bar.show(waiting_report(waiting=True), None)
    bar.close(None)
    text = out.getvalue()
    assert text.count(WAITING) == 1
    assert "campaign 7 running, waiting for relay: " in text


def test_json_lines_carry_the_relays_and_print_again_when_they_change() -> None:
    out = io.StringIO()
    lines = watching.JsonLines(out)
    lines.show(waiting_report(waiting=True), None)
    lines.show(waiting_report(waiting=True), None)
    lines.show(waiting_report(waiting=False), None)
    first, second = [json.loads(x) for x in out.getvalue().splitlines()]
    assert first["waiting_for_relay"] is True and second["waiting_for_relay"] is False
    assert first["relays"][0]["reason"] == "auth_failed"
    assert second["relays"][0]["state"] == "ok"


def test_plain_lines_and_the_bar_say_when_a_scheduled_or_waiting_campaign_sends_next() -> None:
    start = datetime(2026, 12, 8, 7, 0, tzinfo=UTC)
    scheduled = StatusReport(
        7, "scheduled", {"pending": 5}, {}, None, {}, [],
        schedule=ScheduleReport("scheduled", start_at=start, next_send_at=start),
    )  # fmt: skip
    window = ScheduleReport("running", window="Mon-Fri 09:00-17:00", next_send_at=start)
    waiting = replace(scheduled, status="running", schedule=window)
    out = io.StringIO()
    lines = watching.Lines(out)
    lines.show(scheduled, None)
    lines.show(waiting, None)
    shown = out.getvalue().splitlines()
    assert shown[1] == "  scheduled for 2026-12-08 07:00:00 UTC"
    assert shown[3] == "  waiting for the window; next send 2026-12-08 07:00:00 UTC"
    out = io.StringIO()
    bar = watching.Bar(out)
    bar.show(waiting, None)
    bar.close(None)
    assert "waiting for the window; next send 2026-12-08 07:00:00 UTC" in out.getvalue()


def test_the_rate_is_over_the_last_window_of_observations() -> None:
    meter = watching.RateMeter(window=10)
    assert meter.add(0, 0) is None
    assert meter.add(1, 50) == 50
    assert meter.add(2, 150) == 75
    for t in range(3, 30):
        rate = meter.add(t, 150 + 10 * (t - 2))
    assert rate is not None and abs(rate - 10) < 1e-9  # the burst left the window
