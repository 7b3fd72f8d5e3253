"""The command line of the relays: `check-relay` tries each one as the worker would."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import click

from worker.cli.base import _clear_errors, main
from worker.relay_check import Trouble, probe
from worker.relay_config import Relay, relays
from worker.settings import Settings

_TROUBLE_FIELDS = tuple(f.name for f in dataclasses.fields(Trouble))


@main.command("check-relay")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per relay.")
def check_relay(names: tuple[str, ...], as_json: bool) -> None:
    """Try each relay (SMTP_RELAYS, or the one SMTP_HOST names: `default`), or those named.

    Per relay: connect, EHLO, STARTTLS when its TLS is starttls (never plaintext instead),
    AUTH when it has a user name, MAIL FROM:<>, RSET and QUIT; no message is sent. One
    line each: `NAME: ok (STARTTLS, AUTH PLAIN)`, or the trouble the worker would wait on,
    `NAME: REASON: REPLY` (`auth_failed: 535 5.7.8 ...`) or `NAME: REASON: ERROR`
    (`unreachable: ConnectionRefusedError: ...`); REASON is one of unreachable, tls_failed,
    auth_failed, throttled, refused. Exit status 1 when any relay fails. Needs no
    database and no Redis.
    """
    with _clear_errors():
        configured = relays(Settings())
    chosen = _chosen(configured, names)
    results = asyncio.run(_probe_all(chosen))
    for relay, (features, trouble) in zip(chosen, results, strict=True):
        click.echo(
            json.dumps(_report(relay, features, trouble))
            if as_json
            else _line(relay, features, trouble)
        )
    if any(trouble is not None for _features, trouble in results):
        raise click.exceptions.Exit(1)


def _chosen(configured: list[Relay], names: tuple[str, ...]) -> list[Relay]:
    """The relays `names` asks for, in the order given (all of them when none)."""
    by_name = {relay.name: relay for relay in configured}
    for name in names:
        if name not in by_name:
            known = ", ".join(by_name)
            raise click.ClickException(f"no relay named {name} (relays: {known})")
    return [by_name[name] for name in dict.fromkeys(names)] if names else configured


def _line(relay: Relay, features: list[str], trouble: Trouble | None) -> str:
    """`NAME: ok (FEATURE, FEATURE)`, or `NAME: REASON: REPLY or ERROR`."""
    if trouble is not None:
        return f"{relay.name}: {trouble.line()}"
    return f"{relay.name}: ok" + (f" ({', '.join(features)})" if features else "")


def _report(relay: Relay, features: list[str], trouble: Trouble | None) -> dict[str, Any]:
    """The probe of `relay` as `--json` prints it."""
    found = dataclasses.asdict(trouble) if trouble else dict.fromkeys(_TROUBLE_FIELDS)
    return {"relay": relay.name, "ok": trouble is None, "features": features, **found}


async def _probe_all(
    chosen: list[Relay],
) -> list[tuple[list[str], Trouble | None]]:
    return await asyncio.gather(*(probe(relay) for relay in chosen))
