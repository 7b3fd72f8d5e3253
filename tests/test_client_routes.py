"""Per-client relay routes through the installed command: `client add --relays`, `client
update --relays | --all-relays | --name`, `client list [--json]`, checked against the relays
the environment configures (SMTP_RELAYS), and read back by the ledger with the campaign."""

from __future__ import annotations

import json

import asyncpg

from tests.support.pipeline import csv_of, launch
from tests.support.web import cli
from worker import ledger
from worker.settings import Settings

# Two relays, as an operator configures them; the command only reads their names.
RELAYS = {
    "SMTP_RELAYS": "esp,backup",
    "SMTP_RELAY_ESP_URL": "smtp://127.0.0.1:2525",
    "SMTP_RELAY_BACKUP_URL": "smtp://127.0.0.1:2526",
}


async def clients(settings: Settings) -> list[dict[str, object]]:
    listed = await cli(settings, "client", "list", "--json", env=RELAYS)
    assert listed.code == 0, listed.stderr
    answer: list[dict[str, object]] = json.loads(listed.stdout)
    return answer


async def test_routes_are_added_updated_and_listed(pg: asyncpg.Pool, settings: Settings) -> None:
    for args in (
        ["acme", "--name", "Acme", "--sender", "surveys@acme.example", "--relays", "esp"],
        ["globex", "--name", "Globex", "--sender", "research@globex.example"],
    ):
        added = await cli(settings, "client", "add", *args, env=RELAYS)
        assert added.code == 0, added.stderr
    assert await clients(settings) == [
        {
            "id": "acme",
            "name": "Acme",
            "sender": "surveys@acme.example",
            "relays": ["esp"],
            "timezone": "UTC",
        },
        {
            "id": "globex",
            "name": "Globex",
            "sender": "research@globex.example",
            "relays": None,
            "timezone": "UTC",
        },
    ]

    updated = await cli(
        settings,
        "client",
        "update",
        "globex",
        "--relays",
        "backup,esp,backup",
        "--name",
        "Globex Research",
        env=RELAYS,
    )
    assert updated.code == 0, updated.stderr
    assert updated.stdout.strip() == (
        "client globex updated: Globex Research <research@globex.example>, relays backup, esp"
    )
    widened = await cli(settings, "client", "update", "acme", "--all-relays", env=RELAYS)
    assert widened.code == 0, widened.stderr
    # `client add` again without --relays changes the name and sender, not the route.
    again = await cli(
        settings,
        *["client", "add", "globex", "--name", "Globex", "--sender", "r@globex.example"],
        env=RELAYS,
    )
    assert (again.code, again.stdout.strip()) == (0, "client globex updated"), again.stderr
    assert await clients(settings) == [
        {
            "id": "acme",
            "name": "Acme",
            "sender": "surveys@acme.example",
            "relays": None,
            "timezone": "UTC",
        },
        {
            "id": "globex",
            "name": "Globex",
            "sender": "r@globex.example",
            "relays": ["backup", "esp"],
            "timezone": "UTC",
        },
    ]
    plain = await cli(settings, "client", "list", env=RELAYS)
    assert plain.stdout.splitlines() == [
        "acme: Acme <surveys@acme.example>, all relays",
        "globex: Globex <r@globex.example>, relays backup, esp",
    ]

    # The send step reads the route with the campaign.
    report = await launch(
        pg, settings, csv_of("ann@example.com"), client_id="globex", enqueue=False
    )
    async with pg.acquire() as conn:
        campaign = await ledger.load_campaign(conn, report.campaign_id)
    assert campaign is not None and campaign.relays == ["backup", "esp"]


async def test_a_bad_route_is_refused_and_nothing_is_written(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    added = await cli(
        settings,
        *["client", "add", "acme", "--name", "Acme", "--sender", "surveys@acme.example"],
        *["--relays", "backup"],
        env=RELAYS,
    )
    assert added.code == 0, added.stderr
    refusals = {
        ("update", "acme", "--relays", "esp,nowhere"): (
            "Error: no relay named nowhere (relays: esp, backup)"
        ),
        # A good route with a bad name: refused as a whole.
        ("update", "acme", "--relays", "esp", "--name", "Acme\x07"): (
            "Error: --name must not hold a line break or control character"
        ),
        ("update", "acme", "--relays", "back-up"): (
            "Error: 'back-up' is not a relay name (lower-case letters, digits and _)"
        ),
        ("update", "acme", "--relays", ""): (
            "Error: --relays needs relay names, e.g. --relays esp,backup"
        ),
        # Usage errors go on with a hint: `(see ... client update --help)`.
        ("update", "acme", "--relays", "esp", "--all-relays"): (
            "Error: give --relays or --all-relays, not both"
        ),
        ("update", "acme"): "Error: give --name, --relays, --all-relays or --timezone",
        ("update", "acme", "--name", " "): "Error: --name must not be blank",
        ("update", "nobody", "--name", "Nobody"): (
            "Error: no client 'nobody'; add it with `client add`"
        ),
        ("add", "newco", "--name", "New", "--sender", "n@new.example", "--relays", "nowhere"): (
            "Error: no relay named nowhere (relays: esp, backup)"
        ),
    }
    for args, error in refusals.items():
        done = await cli(settings, "client", *args, env=RELAYS)
        assert (done.code, done.stdout, len(done.stderr.splitlines())) == (1, "", 1), args
        assert done.stderr.startswith(error), (args, done.stderr)
    assert await clients(settings) == [
        {
            "id": "acme",
            "name": "Acme",
            "sender": "surveys@acme.example",
            "relays": ["backup"],
            "timezone": "UTC",
        }
    ]

    # With SMTP_RELAYS unset, the one relay is `default`.
    unset = {name: None for name in RELAYS}
    refused = await cli(settings, "client", "update", "acme", "--relays", "esp", env=unset)
    assert (refused.code, refused.stderr.strip()) == (
        1,
        "Error: no relay named esp (relays: default)",
    )
    done = await cli(settings, "client", "update", "acme", "--relays", "default", env=unset)
    assert done.code == 0, done.stderr
    assert await pg.fetchval("SELECT relays FROM clients WHERE id = 'acme'") == ["default"]
