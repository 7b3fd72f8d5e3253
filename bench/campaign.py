"""The bench campaign: generated recipients, the client's opt-out list, the timed import."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from worker import addresses, campaigns, compose, db, ledger, records
from worker.render import TemplateStore
from worker.settings import Settings

CLIENT_ID = "bench"
LOCALES = ("en", "nl", "fr")
# A few non-ASCII names, so RFC 2047 encoding and UTF-8 bodies are part of the cost.
FIRST_NAMES = ("Anna", "Bram", "Chloé", "Daan", "Émile", "Femke", "Jörg", "Lotte")
OPT_OUT_EVERY = 10  # 10 % of the recipients are on the client's opt-out list


def email(i: int) -> str:
    """The address of recipient `i`."""
    return f"person{i}@example.com"


def is_opted_out(i: int) -> bool:
    """Whether recipient `i` is on the client's opt-out list."""
    return i % OPT_OUT_EVERY == 0


@dataclass(frozen=True)
class Recipients:
    """Who the campaign goes to, and who must never receive it."""

    total: int
    opted_out: frozenset[str]

    @property
    def expected(self) -> int:
        """How many messages the sink must receive."""
        return self.total - len(self.opted_out)


@dataclass(frozen=True)
class Imported:
    """The launched campaign and how long its import took."""

    campaign_id: int
    rows: int
    rejected: int
    seconds: float


def write_csv(path: Path, total: int) -> Recipients:
    """Write `total` recipients (email, first_name, locale) to `path`."""
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["email", "first_name", "locale"])
        out.writerows(
            (email(i), FIRST_NAMES[i % len(FIRST_NAMES)], LOCALES[i % len(LOCALES)])
            for i in range(total)
        )
    return Recipients(total, frozenset(email(i) for i in range(total) if is_opted_out(i)))


async def prepare_client(
    conn: asyncpg.Connection, settings: Settings, opted_out: frozenset[str]
) -> None:
    """Register the client and put the opted-out addresses on its list, keyed-hashed."""
    await campaigns.add_client(conn, CLIENT_ID, "Bench Research", "surveys@bench.example.com")
    key = settings.hash_key()
    await conn.copy_records_to_table(
        "client_opt_outs",
        records=[(CLIENT_ID, addresses.address_hash(key, a), a, "bench") for a in opted_out],
        columns=["client_id", "email_hash", "email", "source"],
    )


async def launch(
    conn: asyncpg.Connection, settings: Settings, csv_path: Path, *, reminders: int = 0
) -> Imported:
    """Create the campaign and import the file through `worker.campaigns.launch`, timed;
    with `reminders`, that many rounds a week apart (none due during the bench).

    The launch_campaign job is not enqueued here: the bench does that at t0.
    """
    await db.init_connection(conn)
    request = campaigns.LaunchRequest(
        client_id=CLIENT_ID,
        template="invitation",
        kind="survey",
        survey_url="https://survey.bench.example.com/s/2026",
        name="bench",
        locale="en",
        reminders=reminders,
        reminder_interval=timedelta(days=7) if reminders else None,
    )
    templates = TemplateStore(settings.templates_dir)
    with csv_path.open("rb") as stream:
        start = time.perf_counter()
        report = await campaigns.launch(
            conn,
            request,
            stream,
            templates=templates,
            hash_key=settings.hash_key(),
            progress=lambda _n: None,
        )
        seconds = time.perf_counter() - start
    return Imported(report.campaign_id, report.imported, len(report.rejected), seconds)


async def message_size(conn: asyncpg.Connection, settings: Settings, campaign_id: int) -> int:
    """The size of the campaign's first message as a worker composes it, in bytes."""
    campaign = await ledger.load_campaign(conn, campaign_id)
    row = await conn.fetchrow(
        """SELECT id, email, email_hash, locale, vars FROM invitations
           WHERE campaign_id = $1 AND state = 'pending' ORDER BY id LIMIT 1""",
        campaign_id,
    )
    assert campaign is not None and row is not None
    invitation = records.Invitation(
        row["id"], row["email"], row["email_hash"], row["locale"], row["vars"], attempts=0
    )
    composer = compose.Composer.from_settings(settings, TemplateStore(settings.templates_dir))
    prepared = compose.prepare(composer, campaign, invitation, datetime.now(UTC))
    assert isinstance(prepared, compose.Prepared)
    return len(prepared.data)
