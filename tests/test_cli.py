"""The `survey-worker` command line, run as users run it: a real process, real services."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.faults.harness import cli
from tests.support.admin import admin, with_database
from tests.support.pipeline import add_client, run_workers
from tests.support.smtp import RecordingHandler
from worker import db
from worker.embedded import ServiceUrls
from worker.settings import Settings

SMTP = tuple[RecordingHandler, int]


def launch_args(recipients: Path) -> list[str]:
    """`launch` of a survey campaign for client acme from `recipients`."""
    return [
        "launch",
        "--client",
        "acme",
        "--template",
        "invitation",
        "--recipients",
        str(recipients),
        "--survey-url",
        "https://survey.test/s",
    ]


def test_help_lists_the_commands(settings: Settings) -> None:
    done = cli(settings, "--help")
    assert done.returncode == 0
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
    done = cli(settings, *launch_args(recipients), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["imported"] == 2
    assert [r["line"] for r in report["rejected"]] == [3, 4, 5]
    assert report["rejected"][0]["reason"].startswith("invalid address")
    assert "nope" not in done.stdout
    status = json.loads(cli(settings, "status", str(report["campaign_id"]), "--json").stdout)
    assert status["status"] == "running"
    assert status["counts"] == {"pending": 2}
    await run_workers(settings)
    status = json.loads(cli(settings, "status", str(report["campaign_id"]), "--json").stdout)
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
    done = cli(settings, *launch_args(recipients))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert expected in done.stderr
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 0


def test_migrate_is_idempotent(settings: Settings) -> None:
    done = cli(settings, "migrate")
    assert done.returncode == 0, done.stderr
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
