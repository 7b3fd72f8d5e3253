"""Opt-outs and personal data: `opt-out`, `resubscribe`, `export-opt-outs`, the client's
opt-out `feed`, `erase`, `access-request` (the privacy contact's) and the retention
`purge`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import asyncpg
import click
import structlog

from worker import access, addresses, feed, optouts, privacy
from worker.cli.base import (
    Env,
    OutputPath,
    _clear_errors,
    _emit,
    _not_blank,
    environment,
    main,
    output_file,
    run,
)
from worker.suppression import Scope

# The usage line of the commands that act on one list: exactly one of the two.
ONE_LIST = "(--client ID | --marketing) [OPTIONS]"


def _scope(client_id: str | None, marketing: bool) -> Scope:
    if (client_id is None) == (not marketing):
        raise click.UsageError("give exactly one of --client ID or --marketing")
    return Scope("marketing", "") if marketing else Scope("survey", client_id or "")


def _address(env: Env, email: str) -> tuple[str, bytes]:
    """The normalised address and its keyed hash (a bad address is one clear error)."""
    with _clear_errors():
        normalised = addresses.normalise(email)
    return normalised, addresses.address_hash(env.settings.hash_key(), normalised)


@main.command("opt-out", options_metavar=ONE_LIST)
@click.argument("email")
@click.option("--client", "client_id", help="Opt out of this client's surveys.")
@click.option("--marketing", is_flag=True, help="Opt out of the firm's marketing e-mail.")
def opt_out(email: str, client_id: str | None, marketing: bool) -> None:
    """Put EMAIL on a client's opt-out list or on the marketing list, at once."""
    scope = _scope(client_id, marketing)
    with environment(secrets=True) as env:
        normalised, email_hash = _address(env, email)

        async def work(conn: asyncpg.Connection) -> bool:
            await optouts.require_client(conn, scope)
            return await optouts.add(
                conn,
                scope,
                email_hash=email_hash,
                email=normalised,
                source="cli",
                actor=os.environ.get("USER", "cli"),
            )

        added = run(env, work)
        if added:
            structlog.get_logger().info(
                "opt_out.recorded",
                scope=optouts.scope_label(scope),
                recipient=addresses.recipient_id(email_hash),
                source="cli",
            )
    click.echo("opted out" if added else "already opted out")


@main.command(options_metavar=ONE_LIST)
@click.argument("email")
@click.option("--client", "client_id", help="Take EMAIL off this client's opt-out list.")
@click.option("--marketing", is_flag=True, help="Take EMAIL off the marketing opt-out list.")
@click.option("--actor", required=True, callback=_not_blank, help="Who reverses it.")
@click.option("--reason", required=True, callback=_not_blank, help="Why, for the audit trail.")
def resubscribe(
    email: str, client_id: str | None, marketing: bool, actor: str, reason: str
) -> None:
    """Reverse an opt-out on the privacy contact's request (audited; privacy_officer role)."""
    scope = _scope(client_id, marketing)
    with environment(secrets=True) as env:
        _, email_hash = _address(env, email)
        removed = run(
            env,
            lambda conn: privacy.resubscribe(
                conn, scope, email_hash=email_hash, actor=actor, reason=reason
            ),
        )
    click.echo("opt-out reversed" if removed else "not on that list; nothing changed")


@main.command("export-opt-outs", options_metavar=ONE_LIST)
@click.option("--client", "client_id", help="Export this client's opt-out list.")
@click.option("--marketing", is_flag=True, help="Export the marketing opt-out list.")
@click.option(
    "--output",
    type=OutputPath(path_type=Path, dir_okay=False),
    help="CSV file to write (default: standard output).",
)
def export_opt_outs(client_id: str | None, marketing: bool, output: Path | None) -> None:
    """Write one opt-out list as CSV: email,opted_out_at,source."""
    scope = _scope(client_id, marketing)
    with (
        environment() as env,
        _clear_errors(),
        # Atomic: a failed export leaves no half-written file behind.
        output_file(output) as out,
    ):
        report = run(env, lambda conn: privacy.export_opt_outs(conn, scope, out))
    if report.without_address:
        click.echo(
            f"{report.without_address} entries without a stored address (erased) not exported",
            err=True,
        )
    click.echo(f"{report.exported} opt-outs exported", err=True)


@main.command()
@click.argument("email")
@click.option("--actor", required=True, callback=_not_blank, help="Who carries out the request.")
def erase(email: str, actor: str) -> None:
    """Erase EMAIL everywhere; its keyed hash stays, so its opt-outs still apply."""
    with environment(secrets=True) as env:
        _, email_hash = _address(env, email)
        report = run(env, lambda conn: privacy.erase(conn, email_hash=email_hash, actor=actor))
    click.echo(
        f"erased from {report.invitations} invitations, {report.client_opt_outs} client "
        f"opt-out entries and {report.marketing_opt_outs} marketing opt-out entries"
    )


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def purge(as_json: bool) -> None:
    """Delete the invitations of campaigns that ended more than RETENTION_DAYS ago."""
    with environment() as env:
        days, counts_days = env.settings.retention_days, env.settings.counts_days()
        report = run(
            env, lambda conn: privacy.purge(conn, retention_days=days, counts_days=counts_days)
        )
    _emit(
        as_json,
        {
            "campaigns": report.campaigns,
            "invitations": report.invitations,
            "counts": report.counts,
            "retention_days": days,
        },
        f"purged {report.invitations} invitations of {report.campaigns} campaigns that ended "
        f"more than {days} days ago",
    )


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
