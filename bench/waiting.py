"""`python -m bench.waiting` (`make bench-waiting`): what a campaign costs while it waits for
its send window.

A campaign of `--recipients` people, half in Pacific/Kiritimati (UTC+14), half in
Pacific/Pago_Pago (UTC-11), with a window around the current time in Kiritimati: there it
is open, in Pago Pago it opens about 50 minutes later. One worker sends the open half to a
local sink; then the worker's CPU time (user + system, from /proc) is measured over
`--seconds` while the other half waits, and printed in percent of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg

from bench import procfs, sinks, workers
from bench.database import fresh_database
from bench.errors import BenchError
from bench.run import DATA_DIR, exclusive, say
from bench.settings import bench_settings
from worker import campaigns, db, queue
from worker.dev import embedded
from worker.render import TemplateStore
from worker.settings import ServiceUrls

ZONES = ("Pacific/Kiritimati", "Pacific/Pago_Pago")
SEND_TIMEOUT = 600.0


def window_around_now(zone: str) -> str:
    """A daily window from 10 minutes before to 10 after the current minute in `zone`."""
    local = datetime.now(UTC).astimezone(ZoneInfo(zone))
    now = local.hour * 60 + local.minute
    start, end = max(now - 10, 0), min(now + 11, 24 * 60)
    return f"daily {start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"


def write_csv(path: Path, total: int) -> None:
    with path.open("w") as f:
        f.write("email,timezone\n")
        for i in range(total):
            f.write(f"person{i:07d}@bench.example.com,{ZONES[i % 2]}\n")


async def measure(args: argparse.Namespace, urls: ServiceUrls, folder: Path) -> dict[str, object]:
    """Send the open half, then measure the worker while the other half waits."""
    async with fresh_database(urls.database_url) as database_url:
        with sinks.running(folder / "dump", folder / "sink.log", builtin=True) as sink:
            settings = bench_settings(
                database_url=database_url,
                redis_url=urls.redis_url,
                smtp_port=sink.port,
                data_dir=DATA_DIR,
                slice_size=None,
                smtp_connections=None,
            )
            csv_path = folder / "recipients.csv"
            write_csv(csv_path, args.recipients)
            window = window_around_now(ZONES[0])
            conn = await asyncpg.connect(database_url)
            try:
                await db.init_connection(conn)
                await campaigns.add_client(conn, "bench", "Bench Research", "s@bench.example.com")
                with csv_path.open("rb") as stream:
                    report = await campaigns.launch(
                        conn,
                        campaigns.LaunchRequest(
                            client_id="bench",
                            template="invitation",
                            kind="survey",
                            survey_url="https://survey.bench.example.com/s",
                            name="waiting",
                            locale="en",
                            window=window,
                        ),
                        stream,
                        templates=TemplateStore(settings.templates_dir),
                        hash_key=settings.hash_key(),
                        progress=lambda _n: None,
                    )
                async with workers.running(settings, 1, folder) as crew:
                    redis = await queue.connect(urls.redis_url)
                    try:
                        await queue.enqueue_launch(redis, report.campaign_id)
                    finally:
                        await redis.aclose()
                    half = (args.recipients + 1) // 2
                    say(f"window {window!r}: sending {half} of {args.recipients}")
                    sent_seconds = await _sent(conn, report.campaign_id, half)
                    # Let the slices that found nothing to send ask to run again.
                    await asyncio.sleep(2)
                    pid = crew.pids[0]
                    say(f"sent in {sent_seconds:.1f} s; measuring the worker for {args.seconds} s")
                    before, start = procfs.cpu_seconds(pid), time.monotonic()
                    await asyncio.sleep(args.seconds)
                    after, elapsed = procfs.cpu_seconds(pid), time.monotonic() - start
                    waiting = await conn.fetchval(
                        "SELECT count(*) FROM invitations WHERE state = 'pending'"
                    )
            finally:
                await conn.close()
    if before is None or after is None:
        raise BenchError("the worker exited during the measurement")
    return {
        "recipients": args.recipients,
        "waiting": waiting,
        "window": window,
        "seconds": round(elapsed, 1),
        "cpu_seconds": round(after - before, 3),
        "cpu_percent_of_one_core": round(100 * (after - before) / elapsed, 3),
    }


async def _sent(conn: asyncpg.Connection, campaign_id: int, count: int) -> float:
    """Seconds until `count` invitations of the campaign were sent."""
    start = time.monotonic()
    while time.monotonic() - start < SEND_TIMEOUT:
        sent = await conn.fetchval(
            "SELECT count(*) FROM invitations WHERE campaign_id = $1 AND state = 'sent'",
            campaign_id,
        )
        if sent >= count:
            return time.monotonic() - start
        await asyncio.sleep(0.2)
    raise BenchError(f"fewer than {count} sent after {SEND_TIMEOUT:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.waiting", description=__doc__)
    parser.add_argument("--recipients", type=int, default=20_000, help="campaign size")
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement length")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    try:
        with (
            exclusive(DATA_DIR),
            tempfile.TemporaryDirectory(prefix="survey-bench-waiting-") as folder,
        ):
            say(f"starting embedded Postgres and Redis in {DATA_DIR}")
            (Path(folder) / "dump").mkdir()
            with embedded.services(database_url=None, redis_url=None, data_dir=DATA_DIR) as urls:
                figures = asyncio.run(measure(args, urls, Path(folder)))
    except (BenchError, OSError, asyncpg.PostgresError) as e:
        say(f"failed: {e}")
        return 1
    if args.json:
        print(json.dumps(figures))
    else:
        print(
            f"waiting: {figures['waiting']} of {figures['recipients']} invitations wait for "
            f"their window; the worker used {figures['cpu_seconds']} s of CPU in "
            f"{figures['seconds']} s: {figures['cpu_percent_of_one_core']} % of one core"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
