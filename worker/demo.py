"""`survey-worker demo`: one survey campaign end to end, on this machine only.

Embedded Postgres and Redis, a local SMTP sink that saves every message as an `.eml`
file, a demo client with 25 recipients in en/nl/fr (some opted out of this client, one
only of marketing mail, one only of another client's surveys), a real worker process,
then a summary and a few of the worker's decision log lines.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import click
import orjson

from worker import addresses, campaigns, db, embedded, ledger, optouts, queue, sink
from worker.render import TemplateStore
from worker.settings import Settings
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


def _address(first_name: str) -> str:
    plain = first_name.lower().replace("é", "e").replace("è", "e")
    return f"{plain}@customers.example.com"


def recipients_csv() -> bytes:
    """The demo campaign's recipients file."""
    lines = ["email,first_name,locale"]
    lines += [f"{_address(name)},{name},{locale}" for name, locale in PEOPLE]
    return ("\n".join(lines) + "\n").encode()


async def _prepare(settings: Settings, urls: embedded.ServiceUrls) -> int:
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
        report = await campaigns.launch(
            conn,
            campaigns.LaunchRequest(
                client_id="acme",
                template="invitation",
                kind="survey",
                survey_url="https://survey.acme-research.example/customer-2026",
                name="Customer satisfaction 2026 (demo)",
                locale="en",
            ),
            io.BytesIO(recipients_csv()),
            templates=TemplateStore(settings.templates_dir),
            hash_key=key,
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
    urls: embedded.ServiceUrls, campaign_id: int
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


def main(output: Path) -> None:
    """Run the demo, saving messages under `output`."""
    settings = Settings()
    output.mkdir(parents=True, exist_ok=True)
    for old in output.glob("*.eml"):
        old.unlink()
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
        campaign_id = asyncio.run(_prepare(settings, urls))
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
        }
        log_path = output / "worker.log"
        click.echo("running a worker until the queue is empty ...")
        with log_path.open("wb") as log_file:
            done = subprocess.run(
                [sys.executable, "-m", "worker", "worker", "--burst"],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if done.returncode != 0:
            raise click.ClickException(f"the worker failed; see {log_path}")
        status, counts, reasons = asyncio.run(_summary(urls, campaign_id))
    _print_summary(campaign_id, status, counts, reasons, output, log_path)


def _print_summary(
    campaign_id: int,
    status: str,
    counts: dict[str, int],
    reasons: dict[str, int],
    output: Path,
    log_path: Path,
) -> None:
    click.echo(f"\ncampaign {campaign_id}: {status}")
    for state, n in sorted(counts.items()):
        click.echo(f"  {state:<11} {n}")
    for key, n in reasons.items():
        click.echo(f"    {key.replace(':', ' by ')}: {n}")
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
