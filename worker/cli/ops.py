"""The command line of operators: `ops-password` makes an OPS_USERS entry for /ops."""

from __future__ import annotations

import sys

import click

from worker import passwords
from worker.cli.base import main

MIN_LENGTH = 12


@main.command("ops-password")
@click.argument("user")
def ops_password(user: str) -> None:
    """Hash a password for /ops and print the OPS_USERS entry `USER:HASH`.

    The password is asked twice on a terminal, or read from the first line of standard
    input (`survey-worker ops-password anna < file`). Join several entries with commas.
    """
    if not passwords.valid_user(user):
        raise click.BadParameter("use 1-64 of A-Z a-z 0-9 . _ -", param_hint="USER")
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < MIN_LENGTH:
        raise click.ClickException(f"the password must be at least {MIN_LENGTH} characters")
    click.echo(f"{user}:{passwords.hash_password(password)}")
