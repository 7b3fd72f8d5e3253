"""The command line of clients as users: API keys (`client key`), feed drops (`feed`) and
access requests (`access-request`). Registered on `worker.cli`'s groups; parses, calls the
store, prints (no SQL here)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from worker import access, apikeys, feed
from worker.cli import (
    OutputPath,
    _address,
    _emit,
    _not_blank,
    client,
    environment,
    main,
    output_file,
    run,
)


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


@main.command("feed")
@click.argument("client_id")
@click.option(
    "--output",
    required=True,
    type=OutputPath(path_type=Path, file_okay=False),
    help="Directory of the drop (created if missing).",
)
@click.option(
    "--daily/--not-daily",
    default=None,
    help="Also drop into this directory every day (the worker's feed cron), or stop that.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def feed_drop(client_id: str, output: Path, daily: bool | None, as_json: bool) -> None:
    """Write CLIENT_ID's opt-out events since the last drop into the --output directory:
    a CSV (kind,email,at) and a JSON manifest (count, cursor, sha256 of the CSV)."""
    with environment() as env:
        done = run(env, lambda conn: feed.drop(conn, client_id, output, daily=daily))
    text = f"{done.count} events written to {done.csv_path} (manifest {done.manifest_path.name})"
    if daily is not None:
        text += "; dropped here daily from now on" if daily else "; no daily drop here any more"
    _emit(as_json, done.as_json(), text)


@main.command("access-request")
@click.argument("email")
@click.option("--actor", required=True, callback=_not_blank, help="Who answers the request.")
@click.option(
    "--output",
    type=OutputPath(path_type=Path, dir_okay=False),
    help="JSON file to write (default: standard output).",
)
def access_request(email: str, actor: str, output: Path | None) -> None:
    """Everything held about EMAIL across all clients, as one JSON document (privacy
    contact; audited; privacy_officer role)."""
    with (
        environment(secrets=True) as env,
        # Opened first, atomic: no access is audited unless the document can be written,
        # and the file appears only once complete.
        output_file(output, binary=True) as out,
    ):
        normalised, email_hash = _address(env, email)
        started = time.perf_counter()
        report = run(
            env,
            lambda conn: access.request(conn, email=normalised, email_hash=email_hash, actor=actor),
        )
        seconds = time.perf_counter() - started
        out.write(report.as_bytes() + b"\n")
    held = ", ".join(f"{n} {table}" for table, n in report.counts().items() if n)
    click.echo(f"access request answered in {seconds:.2f} s: {held or 'nothing held'}", err=True)
