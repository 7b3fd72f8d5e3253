"""The firm's clients: `client add`, and their API keys (`client key create|list|revoke`)."""

from __future__ import annotations

import click

from worker import apikeys, campaigns
from worker.cli.base import _emit, environment, main, run


@main.group()
def client() -> None:
    """Manage the firm's clients."""


@client.command("add")
@click.argument("client_id")
@click.option("--name", required=True, help="The client's name, shown in every message.")
@click.option("--sender", required=True, help="The From address of the client's invitations.")
def client_add(client_id: str, name: str, sender: str) -> None:
    """Register client CLIENT_ID (or update its name and sender)."""
    with environment() as env:
        created = run(env, lambda conn: campaigns.add_client(conn, client_id, name, sender))
    click.echo(f"client {client_id} {'added' if created else 'updated'}")


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
