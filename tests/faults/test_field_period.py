"""The field period through the installed commands and a real worker process: a window in
each recipient's time zone, a scheduled start, a close, a daily cap, and every bad input.

No clock is faked: windows are chosen around the real time in Pacific/Kiritimati (UTC+14),
where it is 25 hours later than in Pacific/Pago_Pago (UTC-11), so a window around one
zone's current minute leaves the other waiting for about an hour.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from tests.faults.harness import WorkerProcess, campaign_status, received_at_least, wait_until
from tests.support.pipeline import add_client
from tests.support.smtp import RecordingHandler
from tests.support.web import cli, launch_args
from tests.test_completion import ref_in
from worker import schedule
from worker.settings import Settings

SMTP = tuple[RecordingHandler, int]
Spawn = Callable[[Settings], WorkerProcess]
KIRITIMATI = "Pacific/Kiritimati"
PAGO_PAGO = "Pacific/Pago_Pago"


def window_around_now(zone: str, minutes: int = 10) -> str:
    """A daily window from `minutes` before to `minutes` after the current minute in `zone`
    (cut at midnight)."""
    local = datetime.now(UTC).astimezone(ZoneInfo(zone))
    now = local.hour * 60 + local.minute
    start, end = max(now - minutes, 0), min(now + minutes + 1, 24 * 60)
    return f"daily {start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"


def recipients(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    path = tmp_path / "people.csv"
    path.write_text("email,timezone\n" + "".join(f"{e},{tz}\n" for e, tz in rows))
    return path


async def status_json(settings: Settings, campaign_id: int) -> dict[str, Any]:
    done = await cli(settings, "status", str(campaign_id), "--json")
    assert done.code == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


async def launched(settings: Settings, *args: str) -> int:
    done = await cli(settings, *args, "--json")
    assert done.code == 0, done.stderr
    campaign_id: int = json.loads(done.stdout)["campaign_id"]
    return campaign_id


def batches(worker: WorkerProcess) -> int:
    return worker.output().count('"batch.done"')


async def test_each_recipient_gets_mail_only_inside_the_window_of_their_time_zone(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn, tmp_path: Path
) -> None:
    handler = smtp[0]
    await add_client(pg, "acme")
    # The client's own zone is the recipients' when the file gives none.
    updated = await cli(fast, "client", "update", "acme", "--timezone", KIRITIMATI)
    assert updated.code == 0, updated.stderr
    assert updated.stdout.strip().endswith(f"time zone {KIRITIMATI}")
    east = [f"k{i}@example.com" for i in range(5)]
    west = [f"p{i}@example.com" for i in range(5)]
    rows = [(e, KIRITIMATI) for e in east] + [(w, PAGO_PAGO) for w in west]
    rows.append(("client-zone@example.com", ""))
    window = window_around_now(KIRITIMATI)
    campaign_id = await launched(fast, *launch_args(recipients(tmp_path, rows)), "--window", window)
    worker = spawn(fast)
    await received_at_least(handler, 6)
    assert {m.recipients[0] for m in handler.messages} == {*east, "client-zone@example.com"}

    answer = await status_json(fast, campaign_id)
    assert answer["status"] == "running"
    assert answer["counts"] == {"sent": 6, "pending": 5}
    schedule = answer["schedule"]
    assert schedule["window"] == window
    assert schedule["start_at"] is None and schedule["close_at"] is None
    assert schedule["per_day"] is None
    # Pago Pago's clock reads the window's start about an hour from now.
    pago_local = datetime.now(UTC).astimezone(ZoneInfo(PAGO_PAGO))
    start = int(window[6:8]) * 60 + int(window[9:11])
    minutes = (start - (pago_local.hour * 60 + pago_local.minute)) % (24 * 60)
    expected = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=minutes)
    next_send = datetime.fromisoformat(schedule["next_send_at"])
    assert abs(next_send - expected) <= timedelta(minutes=1), (next_send, expected)
    plain = await cli(fast, "status", str(campaign_id))
    assert "waiting for the window; next send " in plain.stdout

    # Waiting costs nothing: no job runs again for the waiting half.
    before = batches(worker)
    await asyncio.sleep(3)
    assert batches(worker) == before
    assert len(handler.messages) == 6


async def test_a_scheduled_campaign_waits_for_its_start_then_sends_by_itself(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn, tmp_path: Path
) -> None:
    handler = smtp[0]
    await add_client(pg, "acme")
    spawn(fast)
    start = (datetime.now(UTC) + timedelta(seconds=15)).replace(microsecond=0)
    emails = [f"s{i}@example.com" for i in range(6)]
    campaign_id = await launched(
        fast,
        *launch_args(recipients(tmp_path, [(e, "") for e in emails])),
        "--start-at",
        start.isoformat().replace("+00:00", "Z"),
    )
    answer = await status_json(fast, campaign_id)
    assert answer["status"] == "scheduled"
    assert answer["schedule"]["start_at"] == start.isoformat()
    assert answer["schedule"]["next_send_at"] == start.isoformat()
    plain = await cli(fast, "status", str(campaign_id))
    assert f"scheduled for {start:%Y-%m-%d %H:%M:%S} UTC" in plain.stdout
    while datetime.now(UTC) < start - timedelta(seconds=1):
        assert handler.messages == []
        await asyncio.sleep(0.2)
    assert fast.database_url is not None
    url = fast.database_url

    async def completed() -> bool:
        return await campaign_status(url, campaign_id) == "completed"

    await wait_until(completed, timeout=30, what="the scheduled campaign to complete")
    assert sorted(m.recipients[0] for m in handler.messages) == emails
    assert min(handler.arrivals) >= start.timestamp()


async def test_nothing_leaves_after_the_close_and_the_rest_expires(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn, tmp_path: Path
) -> None:
    handler = smtp[0]
    handler.data_delay = 0.4
    await add_client(pg, "acme")
    emails = [f"c{i:02d}@example.com" for i in range(40)]
    worker = spawn(fast.model_copy(update={"smtp_connections": 1, "chunk_size": 2}))

    async def worker_started() -> bool:
        return '"worker.started"' in worker.output()

    await wait_until(worker_started, what="the worker to start")
    # The launch itself takes a few seconds; then about 2.5 messages a second leave.
    close = datetime.now(UTC) + timedelta(seconds=9)
    campaign_id = await launched(
        fast,
        *launch_args(recipients(tmp_path, [(e, "") for e in emails])),
        "--close-at",
        close.isoformat(),
    )
    assert fast.database_url is not None
    url = fast.database_url

    async def completed() -> bool:
        return await campaign_status(url, campaign_id) == "completed"

    await wait_until(completed, timeout=30, what="the closed campaign to complete")
    # A message started before the close may finish after it; none starts after it.
    started_late = [t for t in handler.arrivals if t > close.timestamp() + 2 * 0.4 + 0.5]
    assert started_late == []
    answer = await status_json(fast, campaign_id)
    sent, expired = answer["counts"].get("sent", 0), answer["counts"]["expired"]
    assert sent == len(handler.messages) and 0 < sent < len(emails)
    assert sent + expired == len(emails)
    assert answer["schedule"]["close_at"] == close.astimezone(UTC).isoformat()
    count = len(handler.messages)
    await asyncio.sleep(2)
    assert len(handler.messages) == count

    # A completion that arrives after the close is still recorded.
    done = await cli(fast, "complete", ref_in(handler.messages[0]), "--json")
    assert done.code == 0, done.stderr
    assert json.loads(done.stdout)["completed"] == 1


async def test_per_day_caps_the_messages_of_the_clients_calendar_day(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn, tmp_path: Path
) -> None:
    handler = smtp[0]
    await add_client(pg, "acme")
    emails = [f"d{i}@example.com" for i in range(9)]
    campaign_id = await launched(
        fast,
        *launch_args(recipients(tmp_path, [(e, "") for e in emails])),
        "--per-day",
        "4",
    )
    worker = spawn(fast)
    await received_at_least(handler, 4)
    await asyncio.sleep(1.5)
    assert len(handler.messages) == 4
    answer = await status_json(fast, campaign_id)
    assert answer["counts"] == {"sent": 4, "pending": 5}
    midnight = datetime.combine(datetime.now(UTC).date() + timedelta(days=1), datetime.min.time())
    assert answer["schedule"]["per_day"] == 4
    assert answer["schedule"]["next_send_at"] == midnight.replace(tzinfo=UTC).isoformat()
    plain = await cli(fast, "status", str(campaign_id))
    assert "waiting for the next day (--per-day 4); next send " in plain.stdout
    before = batches(worker)
    await asyncio.sleep(2)
    assert batches(worker) == before


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--window", "Mon-Fri 09:00-25:00"], "Error: --window: 25:00 is not a time of day"),
        (["--window", "Mon-Fry 09:00-17:00"], "Error: --window: 'Fry' is not a day"),
        (["--window", "Mon-Fri 17:00-09:00"], "Error: --window: 'Mon-Fri 17:00-09:00' is an empty"),
        (
            ["--start-at", "2099-01-02T09:00", "--close-at", "2099-01-02T08:00"],
            "Error: --close-at must be after --start-at",
        ),
        (["--close-at", "2001-01-01T00:00Z"], "Error: --close-at must be in the future"),
        (["--start-at", "tomorrow"], "Error: --start-at: 'tomorrow' is not an ISO 8601"),
        (["--per-day", "0"], "Error: --per-day must be 1 or more"),
        (["--per-day", "-3"], "Error: --per-day must be 1 or more"),
    ],
)
async def test_a_bad_field_period_is_one_line_and_writes_nothing(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path, options: list[str], says: str
) -> None:
    await add_client(pg, "acme")
    path = recipients(tmp_path, [("a@example.com", "")])
    done = await cli(settings, *launch_args(path), *options)
    assert done.code == 1, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(says), done.stderr
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_unknown_time_zones_are_refused_where_they_are_given(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    added = await cli(
        settings, "client", "add", "acme", "--name", "Acme", "--sender", "s@acme.example",
        "--timezone", "Mars/Olympus",
    )  # fmt: skip
    assert (added.code, added.stderr.strip()) == (
        1,
        "Error: --timezone: 'Mars/Olympus' is not a time zone (an IANA name, e.g. "
        "Europe/Amsterdam)",
    )
    assert await pg.fetchval("SELECT count(*) FROM clients") == 0
    await add_client(pg, "acme")
    updated = await cli(settings, "client", "update", "acme", "--timezone", "Europe/Atlantis")
    assert updated.code == 1 and updated.stderr.startswith("Error: --timezone:")
    assert await pg.fetchval("SELECT timezone FROM clients") == "UTC"
    path = recipients(
        tmp_path, [("a@example.com", "Europe/Amsterdam"), ("b@example.com", "Nowhere")]
    )
    done = await cli(settings, *launch_args(path), "--json")
    assert done.code == 0, done.stderr
    assert json.loads(done.stdout)["rejected"] == [
        {
            "line": 3,
            "reason": "timezone: 'Nowhere' is not a time zone (an IANA name, e.g. "
            "Europe/Amsterdam)",
        }
    ]
    assert await pg.fetchval("SELECT timezone FROM invitations") == "Europe/Amsterdam"


def test_a_window_around_now_is_open_now() -> None:
    spec = window_around_now(KIRITIMATI)
    window = schedule.parse(spec)
    now = datetime.now(UTC)
    assert schedule.is_open(window, schedule.zone(KIRITIMATI), now)
    assert not schedule.is_open(window, schedule.zone(PAGO_PAGO), now + timedelta(minutes=40))


async def test_reminders_count_against_the_day_and_none_is_sent_after_the_close(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn, tmp_path: Path
) -> None:
    handler = smtp[0]
    await add_client(pg, "acme")
    worker = spawn(fast)

    async def worker_started() -> bool:
        return '"worker.started"' in worker.output()

    await wait_until(worker_started, what="the worker to start")
    paced = await launched(
        fast,
        *launch_args(recipients(tmp_path, [("paced@example.com", "")])),
        *["--per-day", "1", "--reminders", "1", "--reminder-interval", "1s"],
    )
    closing = await launched(
        fast,
        *launch_args(recipients(tmp_path, [("closing@example.com", "")])),
        *["--reminders", "1", "--reminder-interval", "4s"],
        *["--close-at", (datetime.now(UTC) + timedelta(seconds=6)).isoformat()],
    )

    async def reminder_waits() -> bool:
        rows = await pg.fetch(
            "SELECT round, state FROM invitations WHERE campaign_id = $1 ORDER BY round", paced
        )
        return [(r["round"], r["state"]) for r in rows] == [(0, "sent"), (1, "pending")]

    await wait_until(reminder_waits, timeout=30, what="the paced campaign's reminder")
    assert fast.database_url is not None
    url = fast.database_url

    async def closed() -> bool:
        return await campaign_status(url, closing) == "completed"

    await wait_until(closed, timeout=30, what="the closing campaign to complete")
    # Past when the closing campaign's reminder would have been due, and a few reconciles.
    await asyncio.sleep(6)
    received = [m.recipients[0] for m in handler.messages]
    # The day's one message was the first; its reminder waits for the next day.
    assert received.count("paced@example.com") == 1
    answer = await status_json(fast, paced)
    assert answer["reminders"][0]["pending"] == 1
    assert answer["schedule"]["next_send_at"] is not None
    # The close came before the reminder was due: none was made, none sent.
    assert received.count("closing@example.com") <= 1
    rows = await pg.fetch("SELECT round, state FROM invitations WHERE campaign_id = $1", closing)
    assert [r["round"] for r in rows] == [0] and rows[0]["state"] in ("sent", "expired")
