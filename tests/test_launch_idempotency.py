"""`launch --idempotency-key`: a client's repeated launch returns its first campaign."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import asyncpg
import pytest

from tests.support.pipeline import add_client, csv_of
from tests.support.web import cli, launch_args
from worker import campaigns
from worker.render import TemplateStore
from worker.settings import Settings

KEY = "order-2026-117"


async def test_the_same_key_returns_the_first_campaign_and_imports_nothing(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    await add_client(pg, "acme")
    await add_client(pg, "globex")
    first_file = tmp_path / "first.csv"
    first_file.write_text(csv_of("ann@example.com", "bob@example.com", extra="nope\n"))
    # A retry may come from another copy of the file: the same bytes under another name.
    copy = tmp_path / "copy-of-first.csv"
    copy.write_bytes(first_file.read_bytes())

    first = await cli(settings, *launch_args(first_file, key=KEY), "--json")
    assert first.code == 0, first.stderr
    report = json.loads(first.stdout)
    assert (report["imported"], len(report["rejected"]), report["existing"]) == (2, 1, False)

    again = await cli(settings, *launch_args(copy, key=KEY), "--json")
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout) == {
        "campaign_id": report["campaign_id"],
        "imported": 2,
        "rejected": [],
        "existing": True,
    }
    text = await cli(settings, *launch_args(first_file, key=KEY))
    assert text.code == 0, text.stderr
    assert text.stdout.startswith(f"campaign {report['campaign_id']} already existed")
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 1
    emails = await pg.fetch("SELECT email FROM invitations ORDER BY email")
    assert [r["email"] for r in emails] == ["ann@example.com", "bob@example.com"]

    # The key is the client's own: another client's launch with it is another campaign.
    globex = await cli(settings, *launch_args(first_file, client_id="globex", key=KEY), "--json")
    assert globex.code == 0, globex.stderr
    assert json.loads(globex.stdout)["campaign_id"] != report["campaign_id"]


async def test_the_same_key_for_other_recipients_or_options_is_refused(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    """A key reused for another campaign (a client's bug) must not pass the second
    campaign off as sent: it is refused, and nothing is imported."""
    await add_client(pg, "acme")
    first_file = tmp_path / "first.csv"
    first_file.write_text(csv_of("ann@example.com"))
    other_file = tmp_path / "other.csv"
    other_file.write_text(csv_of("carol@example.com"))
    first = await cli(settings, *launch_args(first_file, key=KEY), "--json")
    assert first.code == 0, first.stderr
    campaign_id = json.loads(first.stdout)["campaign_id"]

    refused = [
        await cli(settings, *launch_args(other_file, key=KEY)),
        await cli(settings, *launch_args(first_file, key=KEY), "--locale", "nl"),
        await cli(settings, *launch_args(first_file, key=KEY, survey_url="https://survey.test/t")),
    ]
    for done in refused:
        assert done.code == 1
        assert done.stderr.strip() == (
            f"Error: the idempotency key {KEY!r} was first used for another launch "
            f"(campaign {campaign_id}: other recipients or options); a new campaign needs a "
            "new key"
        )
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 1
    assert await pg.fetchval("SELECT count(*) FROM invitations") == 1


@pytest.mark.parametrize("key", ["", "has space", "x" * 201])
async def test_a_malformed_key_is_a_usage_error(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path, key: str
) -> None:
    await add_client(pg, "acme")
    recipients = tmp_path / "people.csv"
    recipients.write_text(csv_of("ann@example.com"))
    done = await cli(settings, *launch_args(recipients, key=key))
    assert done.code == 1
    assert done.stderr.startswith("Error: Invalid value for --idempotency-key")
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_a_concurrent_launch_with_the_same_key_creates_one_campaign(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    await add_client(pg, "acme")
    request = campaigns.LaunchRequest(
        client_id="acme",
        template="invitation",
        kind="survey",
        survey_url="https://survey.test/s",
        name="retried",
        locale="en",
        idempotency_key="k-1",
    )
    async with pg.acquire() as first, pg.acquire() as second:
        # The first launch has inserted its campaign and not committed yet, so the second
        # finds no campaign with the key and goes on to insert its own.
        transaction = first.transaction()
        await transaction.start()
        first_id = await first.fetchval(
            """INSERT INTO campaigns (client_id, name, kind, template, survey_url, idempotency_key)
               VALUES ('acme', 'first', 'survey', 'invitation', '', 'k-1') RETURNING id"""
        )
        await first.execute(
            "INSERT INTO invitations (campaign_id, email, email_hash) VALUES ($1, 'a@x.test', 'a')",
            first_id,
        )
        racing = asyncio.create_task(
            campaigns.launch(
                second,
                request,
                io.BytesIO(csv_of("zed@example.com").encode()),
                templates=TemplateStore(settings.templates_dir),
                hash_key=settings.hash_key(),
                progress=lambda _n: None,
            )
        )
        await asyncio.sleep(0.5)
        assert not racing.done(), "the second insert must wait for the first transaction"
        await transaction.commit()
        report = await asyncio.wait_for(racing, 10)
    assert (report.campaign_id, report.imported, report.existing) == (first_id, 1, True)
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 1
    assert await pg.fetchval("SELECT count(*) FROM invitations") == 1
