"""The firm's clients: `client add|update|list` (names, senders, relay routes, time zones),
and their
API keys (`client key create|list|revoke`)."""

from __future__ import annotations

import json

import click

from worker import apikeys, campaigns, relay_config
from worker.cli.base import Env, _clear_errors, _emit, environment, main, run


@main.group()
def client() -> None:
    """Manage the firm's clients."""


RELAYS_HELP = "The relays (SMTP_RELAYS names, comma-separated) its mail may leave through."
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
def client_add(
    client_id: str, name: str, sender: str, relays: str | None, timezone: str | None
) -> None:
    """Register client CLIENT_ID (or update its name and sender, and its relays and time
    zone if given)."""
    with _clear_errors():
        campaigns.check_timezone(timezone)
    with environment() as env:
        route = _route(env, relays)
        created = run(
            env,
            lambda conn: campaigns.add_client(
                conn, client_id, name, sender, relays=route, timezone=timezone
            ),
        )
    click.echo(f"client {client_id} {'added' if created else 'updated'}")


@client.command("update")
@click.argument("client_id")
@click.option("--name", help="The client's new name, shown in every message.")
@click.option("--relays", metavar="NAME,NAME", help=RELAYS_HELP)
@click.option("--all-relays", is_flag=True, help="Let its mail leave through every relay.")
@click.option("--timezone", metavar="TZ", help=TIMEZONE_HELP)
def client_update(
    client_id: str, name: str | None, relays: str | None, all_relays: bool, timezone: str | None
) -> None:
    """Change client CLIENT_ID's name, route or time zone; what is not given stays as it
    is."""
    if name is None and relays is None and not all_relays and timezone is None:
        raise click.UsageError("give --name, --relays, --all-relays or --timezone")
    if relays is not None and all_relays:
        raise click.UsageError("give --relays or --all-relays, not both")
    with _clear_errors():
        campaigns.check_timezone(timezone)
    with environment() as env:
        route = _route(env, relays)
        updated = run(
            env,
            lambda conn: campaigns.update_client(
                conn,
                client_id,
                name=name,
                relays=route,
                all_relays=all_relays,
                timezone=timezone,
            ),
        )
    click.echo(f"client {client_id} updated: {_describe(updated)}")


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
