"""`python -m bench.run`: one end-to-end throughput measurement (what `make bench` runs).

The run: embedded Postgres and Redis under `.data/bench` with a fresh database; an SMTP
sink dumping to /dev/shm; a generated campaign imported through `worker.campaigns.launch`;
worker processes started and ready before t0; `launch_campaign` enqueued at t0; the
ledger polled until the campaign is completed; the sink's dump files checked against the
expected set. `smtp-source` on the same sink gives the machine's ceiling: timed right before
t0 and right after the run, with messages of the same size; the higher of the two counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import asyncpg
from arq.connections import ArqRedis

from bench import campaign, ceiling, cpu, dumps, history, latency, procfs, sinks, verify, workers
from bench.database import fresh_database
from bench.errors import BenchError
from bench.monitor import Monitor
from bench.report import Figures, as_json, as_table
from bench.settings import bench_settings
from worker import access, addresses, ledger, logs, queue
from worker.dev import embedded
from worker.errors import ConfigError
from worker.settings import ServiceUrls, Settings

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / ".data" / "bench"
RUN_DIR = DATA_DIR / "run"  # logs of the latest run, kept for reading
SHM = Path("/dev/shm")  # noqa: S108 - memory for the dumps, in a private mkdtemp folder
POLL_SECONDS = 0.05
OPEN_CHECK_SECONDS = 0.25
PROGRESS_SECONDS = 5.0
STALL_SECONDS = 120.0


def say(text: str) -> None:
    """Progress on stderr, so that `--json` output stays clean."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (`make bench BENCH_ARGS="..."` passes it through)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="One end-to-end throughput measurement of survey-worker (make bench).",
    )
    parser.add_argument(
        "--recipients",
        type=_positive_int,
        default=100_000,
        metavar="N",
        help="campaign size, 10 %% of it opted out (100000)",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="worker processes (one per CPU core)",
    )
    parser.add_argument(
        "--slice-size", type=_positive_int, metavar="N", help="SLICE_SIZE (the setting's default)"
    )
    parser.add_argument(
        "--smtp-connections",
        type=_positive_int,
        metavar="N",
        help="SMTP_CONNECTIONS (the setting's default)",
    )
    parser.add_argument(
        "--builtin-sink",
        action="store_true",
        help="use the built-in sink even if smtp-sink is installed",
    )
    parser.add_argument(
        "--features",
        action="store_true",
        help="with BOUNCE_DOMAIN, CONTACT_CAP and two reminder rounds (not yet due) configured",
    )
    parser.add_argument(
        "--relays",
        type=_positive_int,
        default=1,
        metavar="N",
        help="N relays (SMTP_RELAYS) to the same sink sharing SMTP_CONNECTIONS (1)",
    )
    parser.add_argument(
        "--history",
        type=_positive_int,
        metavar="N",
        help="also on a history of N invitations, filled once and kept (bench/history.py)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    return parser.parse_args(argv)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


@contextlib.contextmanager
def exclusive(data_dir: Path) -> Iterator[None]:
    """One bench at a time: two would share Redis and measure each other."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "bench.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BenchError("another bench is running on this machine") from None
        yield


@contextlib.contextmanager
def dump_folder() -> Iterator[Path]:
    """A folder for the sink's dump files, in memory (/dev/shm) when there is one."""
    base = SHM if SHM.is_dir() and os.access(SHM, os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix="survey-bench-", dir=base))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def wait_completed(
    conn: asyncpg.Connection, campaign_id: int, total: int, crew: workers.Crew
) -> None:
    """Poll the ledger until the campaign is completed; fail if it stalls or ends otherwise."""
    last_check = last_progress = last_open_check = time.monotonic()
    last_open = total
    while True:
        row = await conn.fetchrow(
            "SELECT status, reminders FROM campaigns WHERE id = $1", campaign_id
        )
        assert row is not None
        status, pending_rounds = row["status"], row["reminders"]
        if status == "completed":
            return
        # With reminders (days away) the campaign stays running: it is done when no first
        # message is open. That query walks the index past every finished row, so it runs
        # a few times a second, not at every poll (which cost Postgres 5 % of the run).
        if pending_rounds and time.monotonic() - last_open_check >= OPEN_CHECK_SECONDS:
            last_open_check = time.monotonic()
            if not await conn.fetchval(
                """SELECT EXISTS (SELECT 1 FROM invitations WHERE campaign_id = $1
                                  AND state IN ('pending', 'sending', 'deferred'))""",
                campaign_id,
            ):
                return
        if status != "running":
            raise BenchError(f"the campaign ended {status}; see the worker logs in {RUN_DIR}")
        if not crew.running():
            raise BenchError(f"every worker exited; see their logs in {RUN_DIR}")
        now = time.monotonic()
        if now - last_check >= PROGRESS_SECONDS:
            last_check = now
            still_open = await conn.fetchval(
                """SELECT count(*) FROM invitations WHERE campaign_id = $1
                     AND state IN ('pending', 'sending', 'deferred')""",
                campaign_id,
            )
            say(f"sending: {total - still_open:,} of {total:,} done")
            if still_open != last_open:
                last_open, last_progress = still_open, now
            elif now - last_progress > STALL_SECONDS:
                raise BenchError(f"no progress for {STALL_SECONDS:.0f} s; see {RUN_DIR}")
        await asyncio.sleep(POLL_SECONDS)


def _port(url: str | None) -> int:
    port = urlsplit(url or "").port
    if port is None:
        raise BenchError(f"no port in {url}")
    return port


async def import_campaign(
    conn: asyncpg.Connection, settings: Settings, total: int, *, reminders: int
) -> tuple[campaign.Recipients, campaign.Imported]:
    """Generate the recipients and the opt-out list, and import the campaign (timed)."""
    csv_path = RUN_DIR / "recipients.csv"
    say(f"generating {total:,} recipients")
    recipients = await asyncio.to_thread(campaign.write_csv, csv_path, total)
    await campaign.prepare_client(conn, settings, recipients.opted_out)
    say("importing them with worker.campaigns.launch")
    imported = await campaign.launch(conn, settings, csv_path, reminders=reminders)
    csv_path.unlink()
    say(f"imported {imported.rows:,} rows in {imported.seconds:.2f} s")
    return recipients, imported


async def import_and_send(
    conn: asyncpg.Connection,
    redis: ArqRedis,
    settings: Settings,
    args: argparse.Namespace,
    sink: sinks.Sink,
    *,
    reminders: int,
    before_send: Callable[[int], Awaitable[None]] | None = None,
) -> tuple[campaign.Recipients, campaign.Imported, Sent, dict[str, int]]:
    """Import `args.recipients` (timed), call `before_send` with the campaign's id, send them
    with `args.workers` workers into `sink`; the recipients, the import, the send and the
    ledger's counts by state after it."""
    recipients, imported = await import_campaign(
        conn, settings, args.recipients, reminders=reminders
    )
    if before_send is not None:
        await before_send(imported.campaign_id)
    sent = await send(
        conn,
        redis,
        settings,
        workers_count=args.workers,
        campaign_id=imported.campaign_id,
        total=recipients.total,
        sink_pid=sink.pid,
    )
    return recipients, imported, sent, await ledger.counts(conn, imported.campaign_id)


async def time_access_request(conn: asyncpg.Connection, settings: Settings, total: int) -> None:
    """Answer one recipient's access request on the full ledger, and say how long it took."""
    address = campaign.email(1)
    started = time.perf_counter()
    await access.request(
        conn,
        email=address,
        email_hash=addresses.address_hash(settings.hash_key(), address),
        actor="bench",
    )
    seconds = time.perf_counter() - started
    say(f"access request: {seconds:.3f} s for one address among {total:,} invitations")


@dataclass(frozen=True)
class Sent:
    """What the send phase measured; times are wall-clock (epoch) seconds."""

    t0: float
    completed: float
    cpu_used: dict[str, float]
    worker_peak_rss: int
    redis_idle: int
    redis_peak: int
    worker_exits: list[int]
    # The decisions the workers' /metrics counted, scraped before they stopped.
    metrics_decisions: int


async def send(
    conn: asyncpg.Connection,
    redis: ArqRedis,
    settings: Settings,
    *,
    workers_count: int,
    campaign_id: int,
    total: int,
    sink_pid: int,
) -> Sent:
    """Start the workers, enqueue `launch_campaign` at t0, wait for completion, stop them."""
    say(f"starting {workers_count} workers")
    async with workers.running(settings, workers_count, RUN_DIR) as crew:
        await crew.wait_ready({_port(settings.database_url), _port(settings.redis_url)})
        monitor = Monitor(crew.pids, redis)
        redis_idle = await monitor.redis_memory()
        parts = cpu.Parts.of(workers=crew.pids, sink=sink_pid, data_dir=DATA_DIR)
        before = cpu.snapshot(parts)
        sampling = asyncio.create_task(monitor.run())
        try:
            t0 = time.time()
            await queue.enqueue_launch(redis, campaign_id)
            await wait_completed(conn, campaign_id, total, crew)
            completed = time.time()
            cpu_used = cpu.used(before, cpu.snapshot(parts))
            counted = await crew.counted_decisions()
            say(f"the workers' Prometheus metrics counted {counted:,} decisions")
        finally:
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
        await monitor.sample()
        say("completed; stopping the workers")
        exits = await crew.stop()
    return Sent(
        t0,
        completed,
        cpu_used,
        monitor.worker_peak_rss,
        redis_idle,
        monitor.redis_peak,
        exits,
        counted,
    )


def settings_for(
    args: argparse.Namespace, database_url: str, redis_url: str, sink_port: int
) -> Settings:
    """The workers' settings for a run of `args` against these servers and sink."""
    return bench_settings(
        database_url=database_url,
        redis_url=redis_url,
        smtp_port=sink_port,
        data_dir=DATA_DIR,
        slice_size=args.slice_size,
        smtp_connections=args.smtp_connections,
        features=args.features,
        relays=args.relays,
    )


async def measure(args: argparse.Namespace, urls: ServiceUrls) -> Figures:
    """Run the whole measurement; every process and the database are gone when it returns."""
    async with fresh_database(urls.database_url) as database_url:
        with (
            dump_folder() as dump_dir,
            sinks.running(dump_dir, RUN_DIR / "sink.log", builtin=args.builtin_sink) as sink,
        ):
            say(f"sink: {sink.label} on port {sink.port}, dumping to {dump_dir}")
            if sink.builtin:
                say("WARNING: built-in sink: it is the bottleneck, the figures are not comparable")
            settings = settings_for(args, database_url, urls.redis_url, sink.port)
            redis = await queue.connect(urls.redis_url)
            conn = await asyncpg.connect(database_url)
            before: list[ceiling.Ceiling | None] = []

            async def ceiling_before(campaign_id: int) -> None:
                size = await campaign.message_size(conn, settings, campaign_id)
                say(f"measuring the ceiling before the run: smtp-source, {size:,}-byte messages")
                before.append(await asyncio.to_thread(ceiling.measure, sink.port, size))
                await asyncio.to_thread(dumps.clear, dump_dir)

            try:
                await redis.flushdb()
                recipients, imported, sent, counts = await import_and_send(
                    conn,
                    redis,
                    settings,
                    args,
                    sink,
                    reminders=2 if args.features else 0,
                    before_send=ceiling_before,
                )
                p50, p99 = await latency.percentiles(conn, imported.campaign_id, sent.t0)
                await time_access_request(conn, settings, recipients.total)
            finally:
                await conn.close()
                await redis.aclose()
            say("reading the sink's dump files")
            received = await asyncio.to_thread(dumps.read, dump_dir)
            await asyncio.to_thread(dumps.clear, dump_dir)
            size = received.average_size
            say(f"measuring the ceiling after the run: smtp-source, {size:,}-byte messages")
            after = await asyncio.to_thread(ceiling.measure, sink.port, size)
    seconds = max((received.last_accepted or sent.t0) - sent.t0, 1e-6)
    rate = recipients.total / seconds
    return Figures(
        recipients=recipients.total,
        opted_out=len(recipients.opted_out),
        workers=args.workers,
        slice_size=settings.slice_size,
        smtp_connections=settings.smtp_connections,
        relays=args.relays,
        sink=sink.label,
        builtin_sink=sink.builtin,
        seconds=seconds,
        invitations_per_s=rate,
        messages_per_s=received.messages / seconds,
        latency_p50=p50,
        latency_p99=p99,
        worker_peak_rss=sent.worker_peak_rss,
        redis_idle_memory=sent.redis_idle,
        redis_peak_memory=sent.redis_peak,
        message_size=received.average_size,
        ceiling_before_per_s=None if before[0] is None else before[0].rate,
        ceiling_after_per_s=None if after is None else after.rate,
        import_seconds=imported.seconds,
        import_rows_per_s=imported.rows / imported.seconds,
        cpu_seconds=sent.cpu_used,
        cpu_window=sent.completed - sent.t0,
        machine=procfs.machine(),
        problems=[
            *verify.problems(recipients, imported, received.recipients, counts, sent.worker_exits),
            *verify.metrics_problems(sent.metrics_decisions, counts),
        ],
        metrics_decisions=sent.metrics_decisions,
    )


def _as_ctrl_c(signum: int, frame: FrameType | None) -> None:
    # SIGTERM (CI, `timeout`) takes Ctrl-C's way out: inside asyncio.run that cancels the
    # main task, so its cleanup (workers, sink, database) runs; outside it, KeyboardInterrupt.
    signal.raise_signal(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the figures; exit status 1 when the run failed or did not verify."""
    args = parse_args(argv)
    # What the bench itself logs (the access request's line) goes with its messages, to
    # stderr: stdout is the figures alone.
    logs.configure(fmt="console", level="INFO", stream=sys.stderr)
    # A shell starts background jobs with SIGINT ignored: the bench must stop cleanly anyway.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _as_ctrl_c)
    try:
        with exclusive(DATA_DIR):
            shutil.rmtree(RUN_DIR, ignore_errors=True)
            RUN_DIR.mkdir(parents=True)
            say(f"starting embedded Postgres and Redis in {DATA_DIR}")
            with embedded.services(database_url=None, redis_url=None, data_dir=DATA_DIR) as urls:
                if args.history:
                    return history.main(args, urls, measure)
                figures = asyncio.run(measure(args, urls))
    except KeyboardInterrupt:
        say("interrupted; workers, sink, database and services stopped")
        return 130
    except (BenchError, ConfigError, OSError, asyncpg.PostgresError) as e:
        say(f"failed: {e}")
        return 1
    print(as_json(figures) if args.json else as_table(figures))
    return 1 if figures.problems else 0


if __name__ == "__main__":
    sys.exit(main())
