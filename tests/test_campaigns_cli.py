"""`survey-worker campaigns`: the list of campaigns, through the installed command."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import asyncpg

from tests.support.pipeline import add_client, csv_of, run_workers
from tests.support.smtp import RecordingHandler
from tests.support.web import cli, launch_args
from worker.settings import Settings

SMTP = tuple[RecordingHandler, int]


async def _launch(
    settings: Settings, tmp_path: Path, client: str, name: str, count: int, *options: str
) -> int:
    """Launch campaign `name` of `client` to `count` made-up addresses; its id."""
    recipients = tmp_path / f"{name}.csv"
    recipients.write_text(csv_of(*(f"{name}{i}@example.com" for i in range(count))))
    done = await cli(
        settings, *launch_args(recipients, client_id=client), "--name", name, *options, "--json"
    )
    assert done.code == 0, done.stderr
    campaign_id: int = json.loads(done.stdout)["campaign_id"]
    return campaign_id


async def _listed(settings: Settings, *args: str) -> list[dict[str, object]]:
    done = await cli(settings, "campaigns", *args, "--json")
    assert done.code == 0, done.stderr
    listed: list[dict[str, object]] = json.loads(done.stdout)
    return listed


async def test_campaigns_lists_every_campaign_newest_first_with_counts_and_dates(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP, tmp_path: Path
) -> None:
    await add_client(pg, "acme")
    await add_client(pg, "globex")
    spring = await _launch(settings, tmp_path, "acme", "Spring", 2)
    await run_workers(settings)
    autumn = await _launch(settings, tmp_path, "globex", "Autumn", 1, "--kind", "marketing")
    assert (await cli(settings, "cancel", str(autumn))).code == 0
    winter = await _launch(settings, tmp_path, "acme", "Winter", 3)

    listed = await _listed(settings)
    assert [c["id"] for c in listed] == [winter, autumn, spring]
    by_id = {c["id"]: c for c in listed}
    assert set(by_id[spring]) == {
        "id",
        "client_id",
        "name",
        "kind",
        "status",
        "total",
        "counts",
        "created_at",
        "finished_at",
    }
    assert {k: by_id[spring][k] for k in ("client_id", "name", "kind", "status")} == {
        "client_id": "acme",
        "name": "Spring",
        "kind": "survey",
        "status": "completed",
    }
    assert (by_id[spring]["total"], by_id[spring]["counts"]) == (2, {"sent": 2})
    assert (by_id[autumn]["kind"], by_id[autumn]["status"]) == ("marketing", "cancelled")
    assert by_id[autumn]["counts"] == {"cancelled": 1}
    assert (by_id[winter]["status"], by_id[winter]["counts"]) == ("running", {"pending": 3})
    created = {i: datetime.fromisoformat(str(c["created_at"])) for i, c in by_id.items()}
    assert created[winter] >= created[autumn] >= created[spring]
    for ended in (spring, autumn):
        assert datetime.fromisoformat(str(by_id[ended]["finished_at"])) >= created[ended]
    assert by_id[winter]["finished_at"] is None

    assert [c["id"] for c in await _listed(settings, "--client", "acme")] == [winter, spring]
    assert [c["id"] for c in await _listed(settings, "--status", "cancelled")] == [autumn]
    running_of_acme = await _listed(settings, "--client", "acme", "--status", "running")
    assert [c["id"] for c in running_of_acme] == [winter]
    assert await _listed(settings, "--client", "globex", "--status", "completed") == []

    plain = await cli(settings, "campaigns")
    assert plain.code == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(
        f'{winter} acme survey "Winter": running, 3 invitations (pending 3), created '
    )
    assert lines[0].endswith(" UTC") and ", ended " not in lines[0]
    assert lines[2].startswith(f'{spring} acme survey "Spring": completed, 2 invitations (sent 2)')
    assert ", ended " in lines[2]
    none = await cli(settings, "campaigns", "--client", "globex", "--status", "completed")
    assert (none.code, none.stdout) == (0, "no campaigns\n")


async def test_a_bad_status_lists_the_statuses_and_an_unknown_client_is_an_error(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    await add_client(pg, "acme")
    bad = await cli(settings, "campaigns", "--status", "finished")
    assert (bad.code, bad.stdout) == (1, "")
    assert bad.stderr.startswith("Error: Invalid value for '--status': 'finished' is not one of")
    for status in ("running", "paused", "cancelled", "completed", "failed"):
        assert f"'{status}'" in bad.stderr
    assert len(bad.stderr.splitlines()) == 1
    unknown = await cli(settings, "campaigns", "--client", "acne")
    assert (unknown.code, unknown.stdout, unknown.stderr) == (
        1,
        "",
        "Error: unknown client 'acne'\n",
    )
    # A client that exists but has no campaigns is an empty list, not an error.
    assert await _listed(settings, "--client", "acme") == []
