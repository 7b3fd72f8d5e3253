"""Drops of the opt-out feed: `survey-worker feed CLIENT_ID --output DIR` and the daily
cron job, on real Postgres, with the installed command."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import asyncpg
import pytest

from tests.support.pipeline import add_client
from tests.support.web import cli, email_hash
from worker import feed, main, optouts, privacy
from worker.settings import Settings
from worker.suppression import Scope

ACME = Scope("survey", "acme")


async def add(pg: asyncpg.Pool, settings: Settings, address: str, scope: Scope = ACME) -> None:
    async with pg.acquire() as conn:
        await optouts.add(
            conn,
            scope,
            email_hash=email_hash(settings, address),
            email=address,
            source="test",
            actor="test",
        )


def read_drop(manifest_path: Path) -> tuple[dict[str, object], list[list[str]]]:
    manifest = json.loads(manifest_path.read_text())
    data = (manifest_path.parent / str(manifest["csv"])).read_bytes()
    assert hashlib.sha256(data).hexdigest() == manifest["sha256"]
    rows = list(csv.reader(io.StringIO(data.decode())))
    assert rows[0] == ["kind", "email", "at"]
    assert manifest["count"] == len(rows) - 1
    return manifest, rows[1:]


async def test_each_drop_holds_the_events_since_the_last_one_with_safe_cells(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    await add_client(pg, "acme")
    await add_client(pg, "globex")
    # A valid address that a spreadsheet would read as a formula.
    await add(pg, settings, "=cmd@example.com")
    await add(pg, settings, "ann@example.com")
    await add(pg, settings, "globex-only@example.com", Scope("survey", "globex"))
    drops = tmp_path / "drops"
    first = await cli(settings, "feed", "acme", "--output", str(drops), "--json")
    assert first.code == 0, first.stderr
    answer = json.loads(first.stdout)
    assert answer["count"] == 2
    manifest, rows = read_drop(Path(answer["manifest"]))
    assert [r[:2] for r in rows] == [
        ["opt_out", "'=cmd@example.com"],
        ["opt_out", "ann@example.com"],
    ]
    assert manifest["cursor"] == answer["cursor"]
    async with pg.acquire() as conn:
        await privacy.resubscribe(
            conn, ACME, email_hash=email_hash(settings, "ann@example.com"), actor="t", reason="r"
        )
    second = await cli(settings, "feed", "acme", "--output", str(drops))
    assert second.code == 0, second.stderr
    assert second.stdout.startswith("1 events written to ")
    manifests = sorted(drops.glob("*.json"))
    assert len(manifests) == 2 and len(list(drops.glob("*.csv"))) == 2
    _, rows = read_drop(manifests[1])
    assert [r[:2] for r in rows] == [["resubscribe", "ann@example.com"]]
    # Nothing new: an empty drop still says the run happened.
    third = await cli(settings, "feed", "acme", "--output", str(drops), "--json")
    assert json.loads(third.stdout)["count"] == 0
    # Another directory has its own cursor: it starts from the list's beginning.
    other = await cli(settings, "feed", "acme", "--output", str(tmp_path / "other"), "--json")
    assert json.loads(other.stdout)["count"] == 3


async def test_feed_refuses_an_unknown_client_and_an_unwritable_directory(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    await add_client(pg, "acme")
    unknown = await cli(settings, "feed", "nobody", "--output", str(tmp_path))
    blocker = tmp_path / "file"
    blocker.write_text("")
    unwritable = await cli(settings, "feed", "acme", "--output", str(blocker / "sub"))
    assert unknown.code == 1 and unknown.stderr.strip().endswith("unknown client 'nobody'")
    assert unwritable.code == 1 and "cannot create" in unwritable.stderr
    assert await pg.fetchval("SELECT count(*) FROM feed_drops") == 0


@pytest.mark.parametrize("output", ["", "  "])
async def test_feed_refuses_an_empty_output_and_registers_nothing(
    pg: asyncpg.Pool, settings: Settings, output: str
) -> None:
    """An empty --output would be the current folder: refused before anything is written."""
    await add_client(pg, "acme")
    refused = await cli(settings, "feed", "acme", "--output", output, "--daily")
    assert refused.code == 1
    assert "--output" in refused.stderr and "must not be empty" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert await pg.fetchval("SELECT count(*) FROM feed_drops") == 0


async def test_the_daily_cron_drops_for_the_registered_directories(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    assert "drop_feeds" in {job.name for job in main.WorkerSettings.cron_jobs}
    await add_client(pg, "acme")
    await add(pg, settings, "ann@example.com")
    daily, once = tmp_path / "daily", tmp_path / "once"
    registered = await cli(settings, "feed", "acme", "--output", str(daily), "--daily")
    assert registered.code == 0 and "daily" in registered.stdout
    assert (await cli(settings, "feed", "acme", "--output", str(once))).code == 0
    await add(pg, settings, "bob@example.com")
    result = await feed.drop_feeds({"pool": pg})
    assert result == {"drops": 1, "failed": 0}
    manifests = sorted(daily.glob("*.json"))
    assert len(manifests) == 2 and len(list(once.glob("*.json"))) == 1
    _, rows = read_drop(manifests[1])
    assert [r[:2] for r in rows] == [["opt_out", "bob@example.com"]]
    stopped = await cli(settings, "feed", "acme", "--output", str(daily), "--not-daily")
    assert stopped.code == 0
    assert await feed.drop_feeds({"pool": pg}) == {"drops": 0, "failed": 0}
