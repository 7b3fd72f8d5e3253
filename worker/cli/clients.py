"""The firm's clients: `client add|update|list` (names, senders, relay routes, time zones,
DKIM selectors), `client check` (their sending domains against their relays), and their
API keys (`client key create|list|revoke`)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import click

from worker import apikeys, campaigns, relay_config, sending_domain
from worker.cli.base import Env, _clear_errors, _emit, environment, main, run


@main.group()
def client() -> None:
    """Manage the firm's clients."""


RELAYS_HELP = "The relays (SMTP_RELAYS names, comma-separated) its mail may leave through."
SELECTOR_HELP = (
    "The selector of its DKIM key (SELECTOR._domainkey.DOMAIN), for relays that sign with "
    "its domain (SMTP_RELAY_<NAME>_DKIM=client)."
)
TIMEZONE_HELP = (
    "Its time zone (IANA name, e.g. Europe/Amsterdam): its recipients' unless the file "
    "says otherwise, its --per-day calendar, its date-times without an offset."
)


def _route(env: Env, relays: str | None) -> list[str] | None:
    """The route `--relays` names, checked against the configured relays (None: not given)."""
    if relays is None:
        return None
    with _clear_errors():
        return campaigns.check_route(relays.split(","), relay_config.relay_names(env.settings))


@client.command("add")
@click.argument("client_id")
@click.option("--name", required=True, help="The client's name, shown in every message.")
@click.option("--sender", required=True, help="The From address of the client's invitations.")
@click.option(
    "--relays",
    metavar="NAME,NAME",
    help=RELAYS_HELP + " A new client's default: every relay; an existing one's: unchanged.",
)
@click.option("--timezone", metavar="TZ", help=TIMEZONE_HELP + " A new client's default: UTC.")
@click.option("--dkim-selector", metavar="SELECTOR", help=SELECTOR_HELP)
def client_add(
    client_id: str,
    name: str,
    sender: str,
    relays: str | None,
    timezone: str | None,
    dkim_selector: str | None,
) -> None:
    """Register client CLIENT_ID (or update its name and sender, and its relays, time
    zone and DKIM selector if given)."""
    with _clear_errors():
        campaigns.check_timezone(timezone)
        sending_domain.check_selector(dkim_selector)

    async def work(conn: asyncpg.Connection) -> bool:
        async with conn.transaction():
            created = await campaigns.add_client(
                conn, client_id, name, sender, relays=route, timezone=timezone
            )
            if dkim_selector is not None:
                await sending_domain.set_selector(conn, client_id, dkim_selector)
            return created

    with environment() as env:
        route = _route(env, relays)
        created = run(env, work)
    click.echo(f"client {client_id} {'added' if created else 'updated'}")


@client.command("update")
@click.argument("client_id")
@click.option("--name", help="The client's new name, shown in every message.")
@click.option("--relays", metavar="NAME,NAME", help=RELAYS_HELP)
@click.option("--all-relays", is_flag=True, help="Let its mail leave through every relay.")
@click.option("--timezone", metavar="TZ", help=TIMEZONE_HELP)
@click.option("--dkim-selector", metavar="SELECTOR", help=SELECTOR_HELP)
def client_update(
    client_id: str,
    name: str | None,
    relays: str | None,
    all_relays: bool,
    timezone: str | None,
    dkim_selector: str | None,
) -> None:
    """Change client CLIENT_ID's name, route, time zone or DKIM selector; what is not given
    stays as it is."""
    given = (name, relays, timezone, dkim_selector)
    if all(v is None for v in given) and not all_relays:
        raise click.UsageError(
            "give --name, --relays, --all-relays or --timezone, or --dkim-selector"
        )
    if relays is not None and all_relays:
        raise click.UsageError("give --relays or --all-relays, not both")
    with _clear_errors():
        campaigns.check_timezone(timezone)
        sending_domain.check_selector(dkim_selector)

    async def work(conn: asyncpg.Connection) -> campaigns.Client:
        async with conn.transaction():
            updated = await campaigns.update_client(
                conn, client_id, name=name, relays=route, all_relays=all_relays, timezone=timezone
            )
            if dkim_selector is not None:
                await sending_domain.set_selector(conn, client_id, dkim_selector)
            return updated

    with environment() as env:
        route = _route(env, relays)
        updated = run(env, work)
    selector = "" if dkim_selector is None else f", DKIM selector {dkim_selector.lower()}"
    click.echo(f"client {client_id} updated: {_describe(updated)}{selector}")


@client.command("check")
@click.argument("client_id")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def client_check(client_id: str, as_json: bool) -> None:
    """Check CLIENT_ID's sending domain against the relays of its route: its DMARC policy,
    and for each relay whether DMARC can pass (DKIM or SPF aligned) and, when not, the DNS
    record to publish. Exit status 1 when the verdict is `fail` (a launch is refused)."""
    with environment() as env:
        result = run(env, lambda conn: sending_domain.refresh(conn, env.settings, client_id))
    _emit(as_json, result, "\n".join(check_lines(result)))
    if result["verdict"] == "fail":
        raise SystemExit(1)


def check_lines(result: dict[str, Any]) -> list[str]:
    """`client check`'s plain lines: the domain and its policy, each relay, the verdict."""
    dmarc = result["dmarc"]
    policy = "no DMARC record" if dmarc["policy"] is None else f"DMARC p={dmarc['policy']}"
    if dmarc["trouble"]:
        policy = f"DMARC unknown ({dmarc['trouble']})"
    elif dmarc["location"] and dmarc["location"] != result["domain"]:
        policy += f" (from {dmarc['location']})"
    lines = [f"client {result['client']}: {result['domain']}, {policy}"]
    for r in result["relays"]:
        state = "aligned" if r["aligned"] else "not aligned"
        lines.append(
            f"  relay {r['name']}: {state}; DKIM {r['dkim']['result']} ({r['dkim']['detail']}); "
            f"SPF {r['spf']['result']} ({r['spf']['detail']})"
        )
        if r["fix"]:
            lines.append(f"    fix: {r['fix']}")
    lines.append(f"verdict: {result['verdict']}")
    lines += [f"  {reason}" for reason in result["reasons"]]
    return lines


@client.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def client_list(as_json: bool) -> None:
    """List the clients: id, name, sender, relays and time zone."""
    with environment() as env:
        clients = run(env, campaigns.list_clients)
    if as_json:
        click.echo(json.dumps([c.as_json() for c in clients]))
        return
    click.echo("\n".join(f"{c.id}: {_describe(c)}" for c in clients) or "no clients")


def _describe(c: campaigns.Client) -> str:
    """`NAME <SENDER>, relays a, b` (or `all relays`), and `, time zone TZ` but for UTC."""
    route = "all relays" if c.relays is None else "relays " + ", ".join(c.relays)
    zone = "" if c.timezone == "UTC" else f", time zone {c.timezone}"
    return f"{c.name} <{c.sender}>, {route}{zone}"


@client.group("key")
def key() -> None:
    """Manage a client's API keys (Authorization: Bearer KEY on /v1)."""


@key.command("create")
@click.argument("client_id")
@click.option("--name", default="", help="A label for the key, e.g. the system that uses it.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def key_create(client_id: str, name: str, as_json: bool) -> None:
    """Make a new API key for CLIENT_ID and print it, once, as the last word.

    Only a hash of the key is stored: copy it now, it cannot be shown again.
    """
    with environment() as env:
        key_id, new = run(env, lambda conn: apikeys.create(conn, client_id, name=name))
    _emit(as_json, {"key_id": key_id, "key": new}, f"key {key_id} for {client_id}: {new}")


@key.command("list")
@click.argument("client_id")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def key_list(client_id: str, as_json: bool) -> None:
    """List CLIENT_ID's API keys (ids, labels, last use; never the keys)."""
    with environment() as env:
        keys = run(env, lambda conn: apikeys.list_keys(conn, client_id))
    lines = []
    for k in keys:
        data = k.as_json()
        state = f"revoked {data['revoked_at']}" if k.revoked_at else "active"
        used = f"last used {data['last_used_at']}" if k.last_used_at else "never used"
        label = f" {k.name!r}" if k.name else ""
        lines.append(f"{k.key_id}{label}: created {data['created_at']}, {used}, {state}")
    _emit(
        as_json,
        {"client_id": client_id, "keys": [k.as_json() for k in keys]},
        "\n".join(lines) or f"no API keys for {client_id}",
    )


@key.command("revoke")
@click.argument("key_id", type=int)
def key_revoke(key_id: int) -> None:
    """Revoke API key KEY_ID at once: requests with it get 401 from now on."""
    with environment() as env:
        revoked = run(env, lambda conn: apikeys.revoke(conn, key_id))
    click.echo(f"key {key_id} revoked" if revoked else f"key {key_id} was already revoked")
