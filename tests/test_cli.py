"""The `survey-worker` command line, run as users run it: a real process, real services."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html import unescape
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio

from tests.faults.harness import wait_until
from tests.support.admin import admin, with_database
from tests.support.pipeline import add_client, csv_of, run_workers
from tests.support.smtp import RecordingHandler
from tests.support.web import cli, launch_args, start_cli
from worker import db
from worker.dev import embedded
from worker.dev.embedded import ServiceUrls
from worker.main import health_key
from worker.settings import Settings

SMTP = tuple[RecordingHandler, int]


async def test_help_lists_the_commands(settings: Settings) -> None:
    done = await cli(settings, "--help")
    assert done.code == 0
    for command in (
        "migrate",
        "worker",
        "client",
        "launch",
        "status",
        "opt-out",
        "preview",
        "demo",
        "pause",
        "resume",
        "cancel",
        "web",
        "erase",
        "export-opt-outs",
    ):
        assert command in done.stdout


async def test_launch_json_reports_rejected_lines_and_status_counts(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP, tmp_path: Path
) -> None:
    await add_client(pg, "acme")
    recipients = tmp_path / "people.csv"
    recipients.write_text(
        "email,first_name,locale\n"
        "ann@example.com,Ann,en\n"
        "nope,Bob,en\n"
        "cat@example.com,Cat,xx1\n"
        "ann@example.com,Ann again,nl\n"
        "dan@example.com,Dan,fr\n"
    )
    done = await cli(settings, *launch_args(recipients), "--json")
    assert done.code == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["imported"] == 2
    assert [r["line"] for r in report["rejected"]] == [3, 4, 5]
    assert report["rejected"][0]["reason"].startswith("invalid address")
    assert "nope" not in done.stdout
    status = json.loads(
        (await cli(settings, "status", str(report["campaign_id"]), "--json")).stdout
    )
    assert status["status"] == "running"
    assert status["counts"] == {"pending": 2}
    await run_workers(settings)
    status = json.loads(
        (await cli(settings, "status", str(report["campaign_id"]), "--json")).stdout
    )
    assert (status["status"], status["total"], status["counts"]) == ("completed", 2, {"sent": 2})
    assert len(smtp[0].messages) == 2


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("name\nAnn\n", "no `email` column"),
        ("", "the file is empty"),
        ("email\nbad\nworse@\n", "no valid recipient in the file; nothing was launched (line 2"),
        (None, "cannot read"),
    ],
)
async def test_launch_errors_are_one_line_and_import_nothing(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path, content: str | None, expected: str
) -> None:
    await add_client(pg, "acme")
    recipients = tmp_path / "people.csv"
    if content is not None:
        recipients.write_text(content)
    done = await cli(settings, *launch_args(recipients))
    assert done.code == 1
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert expected in done.stderr
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_migrate_is_idempotent(settings: Settings) -> None:
    done = await cli(settings, "migrate")
    assert done.code == 0, done.stderr
    assert done.stdout.strip() == "schema is up to date"


async def test_migrations_apply_to_an_empty_database(services: ServiceUrls) -> None:
    name = f"empty_{uuid.uuid4().hex[:12]}"
    await admin(services.database_url, f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(with_database(services.database_url, name))
    try:
        applied = await db.migrate(conn)
        assert applied == [p.name for _, p in db.migration_files()]
        assert await db.migrate(conn) == []
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert {
            "clients",
            "campaigns",
            "invitations",
            "client_opt_outs",
            "marketing_opt_outs",
            "bounces",
            "opt_out_audit",
            "schema_migrations",
        } <= tables
    finally:
        await conn.close()
    await admin(services.database_url, f"DROP DATABASE {name} WITH (FORCE)")


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["launch"], "Error: Missing option '--client'."),
        (
            ["status", "abc"],
            "Error: Invalid value for 'CAMPAIGN_ID': 'abc' is not a valid integer.",
        ),
        (["launch", "--jsn"], "Error: No such option '--jsn'. Did you mean '--json'?"),
        (["sned"], "Error: No such command 'sned'."),
        (["client", "add", "acme"], "Error: Missing option '--name'."),
        (["opt-out", "a@example.com"], "Error: give exactly one of --client ID or --marketing"),
        (["web", "--port", "70000"], "Error: Invalid value for '--port'"),
    ],
)
async def test_usage_errors_are_one_line_and_exit_1(
    settings: Settings, args: list[str], complaint: str
) -> None:
    done = await cli(settings, *args)
    assert done.code == 1
    assert done.stderr.startswith(complaint), done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert done.stdout == ""


async def test_version_and_help_say_what_each_command_takes(settings: Settings) -> None:
    version = await cli(settings, "--version")
    assert version.code == 0
    assert version.stdout.startswith("survey-worker, version ")
    web_help = (await cli(settings, "web", "--help")).stdout
    for path in ("/unsubscribe/TOKEN", "/v1/", "/webhooks/", "/ops", "/metrics", "/healthz"):
        assert path in web_help, path
    preview_help = " ".join((await cli(settings, "preview", "--help")).stdout.split())
    assert "Locale to render" in preview_help and "Client name shown" in preview_help
    for command in ("opt-out", "resubscribe", "export-opt-outs"):
        usage = (await cli(settings, command, "--help")).stdout.splitlines()[0]
        assert "(--client ID | --marketing)" in usage, usage


@pytest.mark.parametrize(
    ("locale", "signature"),
    [("en", "The research team at Osprey Panels"), ("fr", "L'équipe de recherche d'Osprey Panels")],
)
async def test_preview_names_the_configured_firm(
    settings: Settings, locale: str, signature: str
) -> None:
    done = await cli(
        settings,
        *("preview", "--template", "invitation", "--locale", locale),
        env={"FIRM_NAME": "Osprey Panels"},
    )
    assert done.code == 0, done.stderr
    text, html = done.stdout.split("-" * 72)
    for part in (text, unescape(html)):
        assert signature in part
        assert "Survey Research" not in part


@pytest.mark.parametrize("args", [["--help"], [], ["client"], ["launch", "--help"]])
async def test_help_and_a_bare_group_print_the_help_and_exit_0(
    settings: Settings, args: list[str]
) -> None:
    done = await cli(settings, *args)
    assert done.code == 0, done.stderr
    assert done.stdout.startswith("Usage: ")


async def test_resend_unknown_of_a_missing_campaign_is_an_error(settings: Settings) -> None:
    done = await cli(settings, "resend-unknown", "999")
    assert (done.code, done.stderr, done.stdout) == (1, "Error: no campaign 999\n", "")


@asynccontextmanager
async def redis_user_without_watch(redis_url: str) -> AsyncIterator[str]:
    """The URL of a real Redis user that answers PING but cannot enqueue a job (arq's
    enqueue starts with WATCH): Redis is up when `launch` checks, gone when it enqueues."""
    user = f"no-enqueue-{os.getpid()}"
    admin_client = redis.asyncio.Redis.from_url(redis_url)
    await admin_client.execute_command(
        "ACL", "SETUSER", user, "on", ">secret", "~*", "&*", "+@all", "-watch"
    )
    scheme, _, rest = redis_url.partition("://")
    try:
        yield f"{scheme}://{user}:secret@{rest}"
    finally:
        await admin_client.execute_command("ACL", "DELUSER", user)
        await admin_client.aclose()


@pytest.mark.parametrize("as_json", [True, False])
async def test_launch_that_cannot_enqueue_says_reconcile_starts_the_campaign(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path, as_json: bool
) -> None:
    await add_client(pg, "acme")
    recipients = tmp_path / "people.csv"
    recipients.write_text(csv_of("ann@example.com", "bob@example.com"))
    assert settings.redis_url is not None
    async with redis_user_without_watch(settings.redis_url) as url:
        done = await cli(
            settings,
            *launch_args(recipients),
            *(["--json"] if as_json else []),
            env={"REDIS_URL": url},
        )
    assert done.code == 0, done.stderr
    campaign_id = await pg.fetchval("SELECT id FROM campaigns")
    assert await pg.fetchval("SELECT count(*) FROM invitations") == 2
    if as_json:
        # The whole of stdout is the answer, even though the failure was logged.
        assert json.loads(done.stdout) == {
            "campaign_id": campaign_id,
            "imported": 2,
            "rejected": [],
            "existing": False,
        }
    else:
        assert done.stdout == f"campaign {campaign_id}: 2 recipients imported\n"
    assert f"warning: campaign {campaign_id} created, but it could not be queued" in done.stderr
    assert "the reconcile job will start it" in done.stderr
    assert [e["event"] for e in done.log_lines()] == ["campaign.enqueue_failed"]
    assert "secret" not in done.stdout + done.stderr


async def test_web_on_a_busy_port_is_one_line(settings: Settings) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = await cli(settings, "web", "--port", str(port))
    assert done.code == 1
    assert done.stderr == f"Error: cannot listen on 127.0.0.1:{port}: address already in use\n"


async def embedded_servers_stopped(data_dir: Path) -> bool:
    return (
        embedded.EmbeddedPostgres(data_dir).running_port() is None
        and embedded.EmbeddedRedis(data_dir).running_port() is None
    )


async def web_answers(base: str) -> bool:
    async with httpx.AsyncClient() as client:
        try:
            return (await client.get(f"{base}/healthz")).status_code == 200
        except httpx.TransportError:
            return False


async def worker_heartbeat(data_dir: Path) -> bool:
    port = embedded.EmbeddedRedis(data_dir).running_port()
    if port is None:
        return False
    client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{port}/0")
    try:
        return bool(await client.exists(health_key()))
    finally:
        await client.aclose()


@pytest.mark.parametrize("command", ["web", "worker"])
async def test_sigterm_stops_the_embedded_servers_it_started(
    settings: Settings, tmp_path: Path, command: str
) -> None:
    data_dir = tmp_path / "data"
    port = embedded.free_port()
    args = ["web", "--port", str(port)] if command == "web" else ["worker"]
    process = await start_cli(
        settings,
        *args,
        env={"DATABASE_URL": None, "REDIS_URL": None, "DATA_DIR": str(data_dir)},
    )
    try:
        if command == "web":
            base = f"http://127.0.0.1:{port}"
            await wait_until(lambda: web_answers(base), timeout=90, what="the web app")
        else:
            await wait_until(
                lambda: worker_heartbeat(data_dir), timeout=90, what="the worker's heartbeat"
            )
        assert not await embedded_servers_stopped(data_dir)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, stderr.decode()
        assert await embedded_servers_stopped(data_dir)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        # Run as root, the cluster may live outside tmp_path (/var/lib/survey-worker).
        embedded.discard(data_dir)
