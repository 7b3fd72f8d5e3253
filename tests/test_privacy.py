"""Privacy operations through the real CLI: reversal, export, erasure, retention."""

from __future__ import annotations

import csv
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.support.commands import REFUSED_OUTPUTS, assert_output_refused, output_path
from tests.support.pipeline import add_client, csv_of, launch, opt_out, received_by, run_workers
from tests.support.smtp import RecordingHandler
from tests.support.web import (
    assert_private,
    cli,
    email_hash,
    private_logs,
    serving,
    unsubscribe_link,
)
from worker import privacy, queue
from worker.dev import embedded
from worker.settings import Settings
from worker.suppression import Scope

SMTP = tuple[RecordingHandler, int]
ACME = Scope("survey", "acme")
GLOBEX = Scope("survey", "globex")
MARKETING = Scope("marketing", "")


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    with private_logs() as captured:
        yield captured


async def states(pool: asyncpg.Pool, campaign_id: int) -> dict[str | None, str]:
    rows = await pool.fetch(
        "SELECT email, state, reason FROM invitations WHERE campaign_id = $1", campaign_id
    )
    return {r["email"]: r["state"] + (f":{r['reason']}" if r["reason"] else "") for r in rows}


async def lists(pool: asyncpg.Pool) -> set[tuple[str, str | None]]:
    rows = await pool.fetch(
        """SELECT client_id AS list, email FROM client_opt_outs
           UNION ALL SELECT 'marketing', email FROM marketing_opt_outs"""
    )
    return {(r["list"], r["email"]) for r in rows}


async def test_resubscribe_by_the_privacy_contact_is_audited_and_logged(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    await add_client(pg, "acme")
    await opt_out(pg, settings, "ann@example.com", ACME)
    await opt_out(pg, settings, "ann@example.com", MARKETING)
    done = await cli(
        settings,
        "resubscribe",
        "Ann@Example.com",
        "--client",
        "acme",
        "--actor",
        "privacy@firm.example",
        "--reason",
        "asked by letter, ref 2026-117",
    )
    assert done.code == 0, done.stderr
    assert "opt-out reversed" in done.stdout
    again = await cli(
        settings,
        "resubscribe",
        "ann@example.com",
        "--client",
        "acme",
        "--actor",
        "p",
        "--reason",
        "r",
    )
    assert again.code == 0 and "nothing changed" in again.stdout
    assert await lists(pg) == {("marketing", "ann@example.com")}
    audit = await pg.fetch("SELECT action, scope, actor, reason FROM opt_out_audit ORDER BY id")
    assert [tuple(r) for r in audit][-1] == (
        "resubscribe",
        "client:acme",
        "privacy@firm.example",
        "asked by letter, ref 2026-117",
    )
    reversed_lines = [e for e in done.log_lines() if e["event"] == "opt_out.reversed"]
    assert len(reversed_lines) == 1 and reversed_lines[0]["scope"] == "client:acme"
    assert_private(done.stdout + done.stderr)

    report = await launch(pg, settings, csv_of("ann@example.com"))
    await run_workers(settings)
    assert await states(pg, report.campaign_id) == {"ann@example.com": "sent"}


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        (["--reason", "asked"], "Missing option '--actor'"),
        (["--actor", "privacy"], "Missing option '--reason'"),
        (["--actor", "  ", "--reason", "asked"], "--actor"),
        (["--actor", "privacy", "--reason", ""], "--reason"),
        (["--marketing", "--actor", "privacy", "--reason", "asked"], "exactly one of"),
    ],
)
async def test_resubscribe_refuses_without_actor_or_reason(
    pg: asyncpg.Pool, settings: Settings, options: list[str], complaint: str
) -> None:
    await add_client(pg, "acme")
    await opt_out(pg, settings, "ann@example.com", ACME)
    refused = await cli(settings, "resubscribe", "ann@example.com", "--client", "acme", *options)
    # A usage error is one line and exit status 1, like every other error (README).
    assert refused.code == 1
    assert complaint in refused.stderr
    assert len(refused.stderr.splitlines()) == 1
    assert await lists(pg) == {("acme", "ann@example.com")}
    assert await pg.fetchval("SELECT count(*) FROM opt_out_audit WHERE action = 'resubscribe'") == 0


async def test_library_callers_cannot_skip_actor_or_reason(pg: asyncpg.Pool) -> None:
    async with pg.acquire() as conn:
        with pytest.raises(privacy.PrivacyRequestError, match="reason"):
            await privacy.resubscribe(
                conn, MARKETING, email_hash=b"\0" * 32, actor="privacy", reason=" "
            )
        with pytest.raises(privacy.PrivacyRequestError, match="actor"):
            await privacy.erase(conn, email_hash=b"\0" * 32, actor="")


async def test_export_holds_exactly_that_lists_entries(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    await add_client(pg, "acme")
    await add_client(pg, "globex")
    for address, scope in [
        ("ann@example.com", ACME),
        ("bob@example.com", ACME),
        ("gone@example.com", ACME),
        ("ann@example.com", GLOBEX),
        ("dave@example.com", GLOBEX),
        ("eve@example.com", MARKETING),
    ]:
        await opt_out(pg, settings, address, scope)
    # An entry recorded after its address was erased, as a purged link records it.
    await pg.execute("UPDATE client_opt_outs SET email = NULL WHERE email = 'gone@example.com'")
    output = tmp_path / "acme.csv"
    acme = await cli(settings, "export-opt-outs", "--client", "acme", "--output", str(output))
    assert acme.code == 0, acme.stderr
    rows = list(csv.reader(io.StringIO(output.read_text(encoding="utf-8"))))
    assert rows[0] == ["email", "opted_out_at", "source"]
    assert sorted(r[0] for r in rows[1:]) == ["ann@example.com", "bob@example.com"]
    assert all(r[1].endswith("+00:00") and r[2] == "test" for r in rows[1:])
    assert "1 entries without a stored address (erased) not exported" in acme.stderr

    marketing = await cli(settings, "export-opt-outs", "--marketing")
    assert marketing.code == 0, marketing.stderr
    assert [r[0] for r in csv.reader(io.StringIO(marketing.stdout))] == [
        "email",
        "eve@example.com",
    ]
    unknown = await cli(settings, "export-opt-outs", "--client", "initech")
    assert unknown.code == 1 and "unknown client 'initech'" in unknown.stderr
    assert_private(acme.stdout + marketing.stderr + unknown.stdout)


async def test_export_cells_cannot_run_as_spreadsheet_formulas(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    await add_client(pg, "acme")
    for address in ("=cmd@example.com", "+1@example.com", "-x@example.com", "ann@example.com"):
        await opt_out(pg, settings, address, ACME)
    await pg.execute(
        """UPDATE client_opt_outs SET source = '=HYPERLINK("https://evil.example","x")'
           WHERE email = 'ann@example.com'"""
    )
    out = io.StringIO()
    async with pg.acquire() as conn:
        await privacy.export_opt_outs(conn, ACME, out)
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert sorted((r[0], r[2]) for r in rows[1:]) == [
        ("'+1@example.com", "test"),
        ("'-x@example.com", "test"),
        ("'=cmd@example.com", "test"),
        ("ann@example.com", '\'=HYPERLINK("https://evil.example","x")'),
    ]


async def test_export_of_an_unknown_client_writes_nothing(settings: Settings) -> None:
    unknown = await cli(settings, "export-opt-outs", "--client", "initech")
    assert unknown.code == 1
    assert unknown.stderr.strip() == "Error: unknown client 'initech'"
    assert unknown.stdout == ""


@pytest.mark.parametrize(("output", "error"), REFUSED_OUTPUTS)
async def test_export_output_is_checked_before_anything_is_read(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path, output: str, error: str
) -> None:
    await add_client(pg, "acme")
    await opt_out(pg, settings, "ann@example.com", ACME)
    path = output_path(tmp_path, output)
    refused = await cli(settings, "export-opt-outs", "--client", "acme", "--output", path)
    assert_output_refused(refused, tmp_path, error)


async def test_a_refused_export_leaves_no_file(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    output = tmp_path / "initech.csv"
    unknown = await cli(settings, "export-opt-outs", "--client", "initech", "--output", str(output))
    assert unknown.code == 1
    assert unknown.stderr.strip() == "Error: unknown client 'initech'"
    assert os.listdir(tmp_path) == []


async def test_export_streams_a_long_list(pg: asyncpg.Pool) -> None:
    await add_client(pg, "acme")
    count = privacy.EXPORT_PREFETCH * 3 + 7
    await pg.execute(
        """INSERT INTO client_opt_outs (client_id, email_hash, email, source)
           SELECT 'acme', sha256(i::text::bytea), 'person' || i || '@example.com', 'import'
           FROM generate_series(1, $1) AS i""",
        count,
    )
    out = io.StringIO()
    async with pg.acquire() as conn:
        report = await privacy.export_opt_outs(conn, ACME, out)
    assert report == privacy.ExportReport(exported=count, without_address=0)
    assert len(out.getvalue().splitlines()) == count + 1


def pg_dump(database_url: str) -> str:
    """A full plain-SQL dump of the database, with the pg_dump that ships with pgserver."""
    done = subprocess.run(
        [str(embedded.pg_bin() / "pg_dump"), "--no-owner", database_url],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout


async def test_erasure_leaves_no_trace_in_a_dump_yet_suppression_holds(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP, database_url: str
) -> None:
    address, first_name = "erin.erasable@example.com", "Erinnamarie"
    await add_client(pg, "acme", "Acme Research")
    await add_client(pg, "globex")
    recipients = f"email,first_name\n{address},{first_name}\nbob@example.com,Bob\n"
    await launch(pg, settings, recipients)
    await launch(pg, settings, recipients, client_id="globex")
    await run_workers(settings)
    # Erin leaves Acme's surveys from the message's own link, and the marketing list.
    message = next(m for m in smtp[0].messages if m.recipients == (address,))
    async with serving(settings) as base, httpx.AsyncClient() as client:
        link = unsubscribe_link(message).replace(settings.public_base_url, base)
        clicked = await client.post(link, data={"List-Unsubscribe": "One-Click"})
    assert clicked.status_code == 200
    await opt_out(pg, settings, address, MARKETING)
    assert ("acme", address) in await lists(pg)
    before = pg_dump(database_url)
    assert address in before and first_name in before

    erased = await cli(settings, "erase", address.upper(), "--actor", "privacy@firm.example")
    assert erased.code == 0, erased.stderr
    assert "erased from 2 invitations, 1 client opt-out entries and 1 marketing" in erased.stdout
    dump = pg_dump(database_url)
    assert address not in dump
    assert address.split("@")[0] not in dump
    assert first_name not in dump
    assert "bob@example.com" in dump  # only that person's data is gone
    assert await lists(pg) == {("acme", None), ("marketing", None)}
    audit = await pg.fetchrow("SELECT scope, actor FROM opt_out_audit WHERE action = 'erase'")
    assert tuple(audit) == ("all", "privacy@firm.example")
    events = [e["event"] for e in erased.log_lines()]
    assert "address.erased" in events
    assert_private(erased.stdout + erased.stderr)

    smtp[0].messages.clear()
    survey = await launch(pg, settings, csv_of(address, "carol@example.com"))
    marketing = await launch(pg, settings, csv_of(address), kind="marketing", template="marketing")
    other_client = await launch(pg, settings, csv_of(address), client_id="globex")
    await run_workers(settings)
    assert await states(pg, survey.campaign_id) == {
        address: "suppressed:client_opt_out",
        "carol@example.com": "sent",
    }
    # Acme's marketing mail: Acme's list and the marketing list both apply.
    assert await states(pg, marketing.campaign_id) == {address: "suppressed:client_opt_out"}
    assert await states(pg, other_client.campaign_id) == {address: "sent"}
    assert received_by(smtp[0].messages) == {"carol@example.com": 1, address: 1}


async def test_an_invitation_not_sent_yet_is_never_sent_after_erasure(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    await add_client(pg, "acme")
    report = await launch(pg, settings, csv_of("erin@example.com", "bob@example.com"))
    async with pg.acquire() as conn:
        await privacy.erase(
            conn,
            email_hash=email_hash(settings, "erin@example.com"),
            actor="privacy",
        )
    await run_workers(settings)
    assert await states(pg, report.campaign_id) == {
        None: "failed:address_erased",
        "bob@example.com": "sent",
    }
    assert received_by(smtp[0].messages) == {"bob@example.com": 1}


async def test_purge_deletes_old_invitations_and_links_keep_working(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    await add_client(pg, "acme", "Acme Research")
    old = await launch(pg, settings, csv_of("ann@example.com", "bob@example.com"))
    await run_workers(settings)
    recent = await launch(pg, settings, csv_of("carol@example.com"))
    await run_workers(settings)
    message = next(m for m in smtp[0].messages if m.recipients == ("ann@example.com",))
    await pg.execute(
        "UPDATE campaigns SET completed_at = now() - interval '400 days' WHERE id = $1",
        old.campaign_id,
    )
    purged = await cli(settings, "purge", "--json")
    assert purged.code == 0, purged.stderr
    assert orjson.loads(purged.stdout.splitlines()[-1]) == {
        "campaigns": 1,
        "invitations": 2,
        "counts": 0,
        "retention_days": 365,
    }
    assert await states(pg, old.campaign_id) == {}
    assert await states(pg, recent.campaign_id) == {"carol@example.com": "sent"}
    assert await pg.fetchval("SELECT status FROM campaigns WHERE id = $1", old.campaign_id)
    again = await cli(settings, "purge", "--json")
    assert orjson.loads(again.stdout.splitlines()[-1])["invitations"] == 0

    async with serving(settings) as base, httpx.AsyncClient() as client:
        link = unsubscribe_link(message).replace(settings.public_base_url, base)
        page = await client.get(link)
        clicked = await client.post(link, data={"List-Unsubscribe": "One-Click"})
    assert page.status_code == clicked.status_code == 200
    assert "Acme Research" in clicked.text
    assert await lists(pg) == {("acme", None)}  # the hash is all suppression needs
    smtp[0].messages.clear()
    later = await launch(pg, settings, csv_of("ann@example.com", "bob@example.com"))
    await run_workers(settings)
    assert await states(pg, later.campaign_id) == {
        "ann@example.com": "suppressed:client_opt_out",
        "bob@example.com": "sent",
    }
    assert_private(purged.stdout + purged.stderr)


async def test_the_purge_cron_job_runs_in_the_worker(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP, logs: list[dict[str, Any]]
) -> None:
    await add_client(pg, "acme")
    old = await launch(pg, settings, csv_of("ann@example.com"))
    await run_workers(settings)
    await pg.execute("UPDATE campaigns SET completed_at = now() - interval '2 days'")
    assert settings.redis_url is not None
    redis = await queue.connect(settings.redis_url)
    await redis.enqueue_job("purge")
    await redis.aclose()
    await run_workers(settings.model_copy(update={"retention_days": 1}))
    assert await states(pg, old.campaign_id) == {}
    summary = next(e for e in logs if e["event"] == "retention.purged")
    assert (summary["campaigns"], summary["invitations"]) == (1, 1)


async def test_purge_drops_the_send_rate_counts_older_than_a_day(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    await add_client(pg, "acme")
    report = await launch(pg, settings, csv_of("ann@example.com", "bob@example.com"))
    await run_workers(settings)
    await pg.execute(
        """INSERT INTO recent_sends (campaign_id, at, sent)
           VALUES ($1, now() - interval '25 hours', 7), ($1, now() - interval '23 hours', 5)""",
        report.campaign_id,
    )
    purged = await cli(settings, "purge", "--json")
    assert purged.code == 0, purged.stderr
    kept = await pg.fetch("SELECT sent FROM recent_sends ORDER BY at")
    # The day-old row went; the one within the day and the run's own acceptances stay.
    assert [r["sent"] for r in kept] == [5, 2]


async def test_purge_keeps_feedback_and_contact_counts_while_a_window_reads_them(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    hashed = email_hash(settings, "ann@example.com")
    for days in (10, 40, 400):
        at = f"now() - interval '{days} days'"
        await pg.execute(
            f"""INSERT INTO feedback (invitation_id, campaign_id, email_hash, kind, source,
                                      created_at) VALUES ($1, 1, $2, 'soft', 'verp', {at})""",
            days,
            hashed,
        )
    # Ann's contacts, oldest first; Bob's all older than the window.
    await pg.execute(
        """INSERT INTO contact_counts (email_hash, invitation_ids, counted_at) VALUES
           ($1, '{400, 40, 10}', ARRAY[now() - interval '400 days', now() - interval '40 days',
                                       now() - interval '10 days']),
           ($2, '{500}', ARRAY[now() - interval '500 days'])""",
        hashed,
        email_hash(settings, "bob@example.com"),
    )
    # RETENTION_DAYS=7, but the soft-bounce window reads 30 days back and the cap 60.
    capped = settings.model_copy(update={"retention_days": 7, "contact_cap": "2/60d"})
    purged = await cli(capped, "purge", "--json")
    assert purged.code == 0, purged.stderr
    assert orjson.loads(purged.stdout)["counts"] == 3
    assert [
        r["invitation_id"] for r in await pg.fetch("SELECT invitation_id FROM feedback ORDER BY 1")
    ] == [10, 40]
    rows = await pg.fetch("SELECT email_hash, invitation_ids, counted_at FROM contact_counts")
    assert [(r["email_hash"], r["invitation_ids"]) for r in rows] == [(hashed, [40, 10])]
    assert rows[0]["counted_at"] == sorted(rows[0]["counted_at"])
