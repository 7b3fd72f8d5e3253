"""Privacy operations: reversing an opt-out, exporting a list, erasing an address, retention.

Each function works over one connection. The privacy contact's operations run in one
transaction each and first switch to the `privacy_officer` database role when the connected
user is a member of it (sql/002_roles.sql), so Postgres itself checks that the role may do
what is asked; they audit what they did, without the clear address.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import IO

import asyncpg
import structlog

from worker import addresses, feedback, ledger, optouts, suppression
from worker.db import Conn
from worker.errors import PermissionDenied, PrivacyRequestError
from worker.states import ENDED_STATUSES
from worker.suppression import Scope

log = structlog.get_logger("worker.privacy")

PRIVACY_ROLE = "privacy_officer"
EXPORT_HEADER = ("email", "opted_out_at", "source")
# Rows fetched per round trip while streaming an export, and deleted per statement while
# purging: large enough to be fast, small enough to keep memory and lock times flat.
EXPORT_PREFETCH = 1_000
PURGE_BATCH = 10_000
# /ops's send-rate chart shows ten minutes; its counts are kept this long.
RECENT_SENDS_KEPT = timedelta(days=1)
# OWASP "CSV Injection": the characters that can make a spreadsheet read a cell that
# starts with one of them as a formula.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class ExportReport:
    """How many entries an export wrote, and how many it left out for lack of an address."""

    exported: int
    without_address: int


@dataclass(frozen=True)
class ErasureReport:
    """How many rows lost the clear address, per table."""

    invitations: int
    client_opt_outs: int
    marketing_opt_outs: int


@dataclass(frozen=True)
class PurgeReport:
    """What a retention run deleted."""

    campaigns: int
    invitations: int
    # Feedback and contact-cap rows (keyed hashes) past every window that reads them.
    counts: int = 0


def _required(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise PrivacyRequestError(f"{what} must not be empty")
    return value


def spreadsheet_safe(cell: str) -> str:
    """`cell` as a spreadsheet shows it as text: one that would start a formula gets a
    leading single quote, OWASP's advice against CSV injection.

    Addresses (`=cmd@example.com` is a valid one) and sources both pass through here.
    """
    return "'" + cell if cell.startswith(FORMULA_START) else cell


async def act_as(conn: Conn, role: str) -> None:
    """Switch to `role` for the rest of the current transaction if the user is a member.

    A user that is not a member keeps its own privileges, and Postgres decides.
    """
    if await conn.fetchval("SELECT pg_has_role(current_user, $1, 'MEMBER')", role):
        # SET LOCAL ROLE takes no bind parameters; the role is one of our fixed names.
        await conn.execute(f'SET LOCAL ROLE "{role}"')


@contextlib.asynccontextmanager
async def in_role(conn: Conn, role: str, command: str) -> AsyncIterator[None]:
    """A transaction in `role` (`act_as`); when Postgres refuses the user a statement in
    it, `PermissionDenied` in one sentence naming `command`, and nothing is written."""
    try:
        async with conn.transaction():
            await act_as(conn, role)
            yield
    except asyncpg.InsufficientPrivilegeError:
        raise PermissionDenied(f"{command} needs the {role} role") from None


async def resubscribe(
    conn: Conn, scope: Scope, *, email_hash: bytes, actor: str, reason: str
) -> bool:
    """Take an address off an opt-out list on the privacy contact's request.

    Writes an audit row with `actor` and `reason` (both required) and logs
    `opt_out.reversed`; returns False, changing nothing, if the address was not on the list.
    """
    actor = _required(actor, "the actor")
    reason = _required(reason, "the reason")
    async with in_role(conn, PRIVACY_ROLE, "resubscribe"):
        await optouts.require_client(conn, scope)
        removed = await optouts.remove(conn, scope, email_hash=email_hash)
        if removed:
            await optouts.audit(
                conn,
                "resubscribe",
                optouts.scope_label(scope),
                email_hash=email_hash,
                actor=actor,
                reason=reason,
            )
    if removed:
        log.info(
            "opt_out.reversed",
            scope=optouts.scope_label(scope),
            recipient=addresses.recipient_id(email_hash),
        )
    return bool(removed)


async def export_opt_outs(conn: Conn, scope: Scope, out: IO[str]) -> ExportReport:
    """Write one opt-out list as CSV (`email,opted_out_at,source`) to `out`.

    Runs as `privacy_officer`: a user without the right to read the lists' addresses gets
    `PermissionDenied`, an unknown client `NotFound`, and nothing is written. Only the
    entries of `scope` are read. Rows are streamed through a server-side cursor, so the
    list never sits in memory whatever its size. Every cell is made spreadsheet-safe.
    Entries without a stored address (erased, or recorded from a link after retention)
    cannot be exported and are counted.
    """
    exported = without_address = 0
    if scope.kind == "marketing":
        table = "marketing_opt_outs"
        query = "SELECT email, created_at, source FROM marketing_opt_outs ORDER BY created_at"
        args: tuple[str, ...] = ()
    else:
        table = "client_opt_outs"
        query = """SELECT email, created_at, source FROM client_opt_outs
                   WHERE client_id = $1 ORDER BY created_at"""
        args = (scope.client_id,)
    async with conn.transaction(readonly=True):
        await act_as(conn, PRIVACY_ROLE)
        # Asked before anything is written, so that the refusal is one clear sentence
        # rather than Postgres's permission error on the query.
        if not await conn.fetchval("SELECT has_column_privilege($1, 'email', 'SELECT')", table):
            raise PermissionDenied(f"export-opt-outs needs the {PRIVACY_ROLE} role")
        await optouts.require_client(conn, scope)
        writer = csv.writer(out)
        writer.writerow(EXPORT_HEADER)
        async for row in conn.cursor(query, *args, prefetch=EXPORT_PREFETCH):
            if row["email"] is None:
                without_address += 1
                continue
            opted_out_at = row["created_at"].astimezone(UTC).isoformat(timespec="seconds")
            writer.writerow(
                [spreadsheet_safe(c) for c in (row["email"], opted_out_at, row["source"])]
            )
            exported += 1
    return ExportReport(exported=exported, without_address=without_address)


async def erase(conn: Conn, *, email_hash: bytes, actor: str) -> ErasureReport:
    """Remove an address's personal data everywhere, keeping its keyed hash.

    In one transaction the clear address is set to NULL on every invitation and opt-out
    entry, and the invitations' template variables (names, personal links) are emptied.
    The hashes stay, so the person remains suppressed wherever they opted out; an invitation
    not sent yet can no longer be sent. Writes an audit row and logs `address.erased`.
    """
    actor = _required(actor, "the actor")
    async with in_role(conn, PRIVACY_ROLE, "erase"):
        invitations = await ledger.erase_addresses(conn, email_hash)
        client_lists, marketing = await optouts.erase_addresses(conn, email_hash)
        await optouts.audit(
            conn, "erase", "all", email_hash=email_hash, actor=actor, reason="erasure request"
        )
    report = ErasureReport(
        invitations=invitations,
        client_opt_outs=client_lists,
        marketing_opt_outs=marketing,
    )
    log.info(
        "address.erased",
        recipient=addresses.recipient_id(email_hash),
        invitations=report.invitations,
        client_opt_outs=report.client_opt_outs,
        marketing_opt_outs=report.marketing_opt_outs,
    )
    return report


async def purge(conn: Conn, *, retention_days: int, counts_days: int | None = None) -> PurgeReport:
    """Delete the invitations of campaigns that ended more than `retention_days` ago, and
    feedback and contact-cap rows older than `counts_days` (`Settings.counts_days`;
    default `retention_days`), and the send-rate chart's counts older than a day.

    A campaign has ended when it is completed, cancelled or failed. Its row stays (it holds
    no personal data); opt-outs and bounces are never touched, so suppression is not
    weakened, and unsubscribe links from purged messages keep working because the token
    carries all the opt-out needs. Deletes in batches; safe to run again at any time.
    """
    campaign_ids: list[int] = [
        r["id"]
        for r in await conn.fetch(
            """SELECT c.id FROM campaigns c
               WHERE c.status = ANY($2::text[])
                 AND c.completed_at < now() - make_interval(days => $1)
                 AND EXISTS (SELECT 1 FROM invitations i WHERE i.campaign_id = c.id)
               ORDER BY c.id""",
            retention_days,
            list(ENDED_STATUSES),
        )
    ]
    deleted = 0
    for campaign_id in campaign_ids:
        while True:
            count = await ledger.delete_invitations(conn, campaign_id, limit=PURGE_BATCH)
            deleted += count
            if count < PURGE_BATCH:
                break
    days = retention_days if counts_days is None else counts_days
    counts = await feedback.purge(conn, days) + await suppression.purge_counts(conn, days)
    await ledger.trim_recent_sends(conn, RECENT_SENDS_KEPT)
    report = PurgeReport(campaigns=len(campaign_ids), invitations=deleted, counts=counts)
    log.info(
        "retention.purged",
        retention_days=retention_days,
        campaigns=report.campaigns,
        invitations=report.invitations,
        counts=report.counts,
    )
    return report
