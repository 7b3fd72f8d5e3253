"""`survey-worker demo`: one survey campaign end to end, on this machine only.

Embedded Postgres and Redis, a local SMTP sink that saves every message as an `.eml`
file, a demo client with 25 recipients in en/nl/fr (some opted out of this client, one
only of marketing mail, one only of another client's surveys), a real worker process,
then a summary and a few of the worker's decision log lines; the unsubscribe web app the
messages' links lead to stops with the demo, or with `--serve` at Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import io
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import click
import orjson

from worker import addresses, campaigns, db, ledger, optouts, privacy, queue
from worker.dev import embedded, sink
from worker.render import TemplateStore
from worker.settings import ServiceUrls, Settings
from worker.suppression import Scope

PEOPLE = [
    ("Emma", "en"),
    ("Daan", "nl"),
    ("Léa", "fr"),
    ("Oliver", "en"),
    ("Sanne", "nl"),
    ("Hugo", "fr"),
    ("Amelia", "en"),
    ("Bram", "nl"),
    ("Chloé", "fr"),
    ("Jack", "en"),
    ("Fleur", "nl"),
    ("Louis", "fr"),
    ("Isla", "en"),
    ("Milan", "nl"),
    ("Manon", "fr"),
    ("Noah", "en"),
    ("Julia", "nl"),
    ("Gabriel", "fr"),
    ("Mia", "en"),
    ("Sem", "nl"),
    ("Inès", "fr"),
    ("Leo", "en"),
    ("Tess", "nl"),
    ("Arthur", "fr"),
    ("Grace", "en"),
]
CLIENT_OPT_OUTS = ("oliver", "bram", "manon")  # on Acme's own opt-out list
MARKETING_ONLY = "isla"  # opted out of the firm's marketing mail only: still invited
OTHER_CLIENT = "milan"  # opted out of Globex's surveys only: still invited by Acme
UNSUBSCRIBER = "grace"  # unsubscribes with one click after the first campaign
NEWCOMER = "Zoe"  # only in the follow-up campaign
WEB_START_TIMEOUT = 30.0


def _address(first_name: str) -> str:
    plain = first_name.lower().replace("é", "e").replace("è", "e")
    return f"{plain}@customers.example.com"


def recipients_csv() -> bytes:
    """The demo campaign's recipients file."""
    lines = ["email,first_name,locale"]
    lines += [f"{_address(name)},{name},{locale}" for name, locale in PEOPLE]
    return ("\n".join(lines) + "\n").encode()


async def _prepare(settings: Settings, urls: ServiceUrls) -> bool:
    """Clients and opt-out lists as the demo needs them; True if a previous run's one-click
    opt-out was reversed."""
    conn = await asyncpg.connect(urls.database_url)
    try:
        await db.migrate(conn)
        await db.init_connection(conn)
        await campaigns.add_client(conn, "acme", "Acme Research", "surveys@acme-research.example")
        await campaigns.add_client(conn, "globex", "Globex", "research@globex.example")
        key = settings.hash_key()
        lists = [(Scope("survey", "acme"), n) for n in CLIENT_OPT_OUTS]
        lists += [
            (Scope("marketing", ""), MARKETING_ONLY),
            (Scope("survey", "globex"), OTHER_CLIENT),
        ]
        for scope, name in lists:
            email = addresses.normalise(_address(name.capitalize()))
            await optouts.add(
                conn,
                scope,
                email_hash=addresses.address_hash(key, email),
                email=email,
                source="demo",
                actor="demo",
            )
        # A previous run unsubscribed this person through the web app: the privacy contact's
        # reversal puts them back, so that every run shows the same thing.
        return await privacy.resubscribe(
            conn,
            Scope("survey", "acme"),
            email_hash=addresses.address_hash(key, _address(UNSUBSCRIBER.capitalize())),
            actor="demo",
            reason="demo reset: the demo unsubscribes this person again",
        )
    finally:
        await conn.close()


async def _launch(settings: Settings, urls: ServiceUrls, name: str, recipients: bytes) -> int:
    """Create an Acme survey campaign and enqueue it; return its id."""
    conn = await asyncpg.connect(urls.database_url)
    try:
        await db.init_connection(conn)
        report = await campaigns.launch(
            conn,
            campaigns.LaunchRequest(
                client_id="acme",
                template="invitation",
                kind="survey",
                survey_url="https://survey.acme-research.example/customer-2026",
                name=name,
                locale="en",
            ),
            io.BytesIO(recipients),
            templates=TemplateStore(settings.templates_dir),
            hash_key=settings.hash_key(),
            progress=lambda _n: None,
        )
    finally:
        await conn.close()
    redis = await queue.connect(urls.redis_url)
    try:
        await queue.enqueue_launch(redis, report.campaign_id)
    finally:
        await redis.aclose()
    return report.campaign_id


async def _summary(
    urls: ServiceUrls, campaign_id: int
) -> tuple[str, dict[str, int], dict[str, int]]:
    conn = await asyncpg.connect(urls.database_url)
    try:
        status = await ledger.campaign_status(conn, campaign_id) or "missing"
        return (
            status,
            await ledger.counts(conn, campaign_id),
            await ledger.reason_counts(conn, campaign_id),
        )
    finally:
        await conn.close()


def main(output: Path, *, serve: bool = False) -> None:
    """Run the demo, saving messages under `output`; with `serve`, keep its web app up
    until Ctrl-C."""
    settings = Settings()
    output.mkdir(parents=True, exist_ok=True)
    for old in output.glob("*.eml"):
        old.unlink()
    web_base = f"http://127.0.0.1:{embedded.free_port()}"
    with (
        embedded.services(
            database_url=settings.database_url,
            redis_url=settings.redis_url,
            data_dir=settings.data_dir,
        ) as urls,
        sink.running(output) as smtp_port,
    ):
        click.echo(f"Postgres: {urls.database_url}\nRedis:    {urls.redis_url}")
        click.echo(f"SMTP sink on 127.0.0.1:{smtp_port}, saving messages to {output}/")
        if asyncio.run(_prepare(settings, urls)):
            click.echo(
                "reset: the previous run's one-click opt-out was reversed as the privacy "
                "contact would (`survey-worker resubscribe`), so every run shows the same"
            )
        campaign_id = asyncio.run(
            _launch(settings, urls, "Customer satisfaction 2026 (demo)", recipients_csv())
        )
        click.echo(f"campaign {campaign_id} launched for client acme, 25 recipients")
        env = {
            **os.environ,
            "APP_ENV": "demo",
            "DATABASE_URL": urls.database_url,
            "REDIS_URL": urls.redis_url,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp_port),
            "SMTP_TLS": "none",
            "LOG_FORMAT": "json",
            # The links in the messages lead to the web app this demo runs.
            "PUBLIC_BASE_URL": web_base,
        }
        log_path = output / "worker.log"
        log_path.unlink(missing_ok=True)
        click.echo("running a worker until the queue is empty ...")
        _run_worker(env, log_path)
        status, counts, reasons = asyncio.run(_summary(urls, campaign_id))
        _print_summary(campaign_id, status, counts, reasons, output, log_path)
        with _web_app(env, web_base, output / "web.log") as web:
            _unsubscribe_and_follow_up(settings, urls, env, output, log_path)
            if serve:
                _serve(web, web_base, output)
    if not serve:
        click.echo(
            f"\nThe web app stopped with the demo: the links in {output}/ lead nowhere now. "
            f"To keep its pages up, run `{_program()} demo --serve` (Ctrl-C stops it)."
        )


def _run_worker(env: dict[str, str], log_path: Path) -> None:
    """Run a real worker process until the queue is empty, appending to its log."""
    with log_path.open("ab") as log_file:
        done = subprocess.run(
            [sys.executable, "-m", "worker", "worker", "--burst"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        raise click.ClickException(f"the worker failed; see {log_path}")


@contextlib.contextmanager
def _web_app(env: dict[str, str], base: str, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `survey-worker web` at `base` until the block ends (in a session of its own, so
    that a Ctrl-C in the terminal reaches the demo, which then stops it)."""
    port = base.rpartition(":")[2]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(  # noqa: S603 - this interpreter, arguments built here
            [sys.executable, "-m", "worker", "web", "--host", "127.0.0.1", "--port", port],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_until_healthy(process, base, log_path)
            click.echo(f"\nunsubscribe web app on {base} (log: {log_path})")
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _serve(web: subprocess.Popen[bytes], base: str, output: Path) -> None:
    """Keep the web app up until Ctrl-C (or until it stops by itself: an error)."""
    click.echo(
        f"\nserving the pages of the links in {output}/ on {base}; Ctrl-C stops the web app "
        "and the demo's servers"
    )
    try:
        while web.poll() is None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        click.echo("stopping")
        return
    raise click.ClickException(f"the web app stopped (exit status {web.returncode})")


def _program() -> str:
    """How to run this command again: `survey-worker` when that is the one on PATH, else
    the path it was started by (`.venv/bin/survey-worker` under `make demo`)."""
    started = Path(sys.argv[0])
    on_path = shutil.which("survey-worker")
    if started.name != "survey-worker" or (
        on_path is not None and Path(on_path).resolve() == started.resolve()
    ):
        return "survey-worker"
    return os.path.relpath(started)


def _wait_until_healthy(process: subprocess.Popen[bytes], base: str, log_path: Path) -> None:
    deadline = time.monotonic() + WEB_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(f"the web app stopped; see {log_path}")
        # A fixed http://127.0.0.1 URL of the app this demo started.
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{base}/healthz", timeout=2) as response,  # noqa: S310
        ):
            if response.status == 200:
                return
        time.sleep(0.1)
    raise click.ClickException(f"the web app did not start in time; see {log_path}")


def _one_click(link: str) -> int:
    """POST RFC 8058's one-click body to an unsubscribe link, as a mail client does."""
    request = urllib.request.Request(  # noqa: S310 - the demo's own http://127.0.0.1 app
        link,
        data=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        status: int = response.status
        return status


def _unsubscribe_link(output: Path, recipient: str) -> str:
    """The List-Unsubscribe URL of the saved message to `recipient`."""
    parser = email.parser.BytesParser(policy=email.policy.default)
    for path in sorted(output.glob("*.eml")):
        headers = parser.parsebytes(path.read_bytes(), headersonly=True)
        if recipient in str(headers["To"]):
            return str(headers["List-Unsubscribe"]).strip("<>")
    raise click.ClickException(f"no saved message to {recipient}")


def _unsubscribe_and_follow_up(
    settings: Settings,
    urls: ServiceUrls,
    env: dict[str, str],
    output: Path,
    log_path: Path,
) -> None:
    """One person unsubscribes with one click; the next campaign does not mail them."""
    person = _address(UNSUBSCRIBER.capitalize())
    link = _unsubscribe_link(output, person)
    click.echo(f"unsubscribe link in the message to {person}:\n  {link}")
    status = _one_click(link)
    click.echo(f"one-click POST (RFC 8058, List-Unsubscribe=One-Click): HTTP {status}")
    follow_up = [person, _address(NEWCOMER)]
    csv_bytes = ("email\n" + "".join(f"{e}\n" for e in follow_up)).encode()
    campaign_id = asyncio.run(_launch(settings, urls, "Follow-up (demo)", csv_bytes))
    click.echo(f"\nfollow-up campaign {campaign_id} to {' and '.join(follow_up)} ...")
    _run_worker(env, log_path)
    _print_counts(campaign_id, *asyncio.run(_summary(urls, campaign_id)))
    click.echo(f"{person} unsubscribed with one click and was not mailed again.")


def _print_counts(
    campaign_id: int, status: str, counts: dict[str, int], reasons: dict[str, int]
) -> None:
    click.echo(f"campaign {campaign_id}: {status}")
    for state, n in sorted(counts.items()):
        click.echo(f"  {state:<11} {n}")
    for key, n in reasons.items():
        click.echo(f"    {key.replace(':', ' by ')}: {n}")


def _print_summary(
    campaign_id: int,
    status: str,
    counts: dict[str, int],
    reasons: dict[str, int],
    output: Path,
    log_path: Path,
) -> None:
    click.echo("")
    _print_counts(campaign_id, status, counts, reasons)
    emls = sorted(output.glob("*.eml"))
    click.echo(f"\n{len(emls)} messages saved in {output}/, e.g. {emls[0] if emls else '-'}")
    click.echo("\na few decision log lines (recipients are keyed hashes, never addresses):")
    shown: set[str] = set()
    for raw in log_path.read_bytes().splitlines():
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        event = line.get("event", "") if isinstance(line, dict) else ""
        if event.startswith(("invitation.", "campaign.")) and event not in shown:
            shown.add(event)
            click.echo("  " + raw.decode())
    click.echo(f"full log: {log_path}")
