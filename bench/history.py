"""`make bench BENCH_ARGS="--history N"`: the throughput and the interactive answers on top
of a long history (issue 24).

A database holding N invitations of 1,000 campaigns (fewer below 10 million: one per 10,000
invitations, at least 20) of 20 clients over a year is filled once with generate_series in
SQL and kept as the template `history_<N>` on the bench's Postgres cluster: later runs copy
it (minutes saved). Every run then measures, on a copy:

- the fresh figure first (the ordinary `make bench` run, on an empty database), then on the
  history: launching and sending the same campaign (invitations/s against the fresh figure);
- interactive answers, each run REPEAT (200) times (p50, p99): `status`, `GET /ops`,
  a `GET /v1/opt-outs` page, `GET /v1/campaigns/{id}`, an access request;
- the reminder scan (reconcile's pass over the history, and creating one round of the new
  campaign), the daily purge (one day's expired campaigns), the daily feed drop and a
  client's first drop.

The history's people are `panel<i>@example.org`, never the bench campaign's
`person<i>@example.com`: the sink's dump files must hold exactly the new campaign's mail.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx
from pydantic import SecretStr

from bench import dumps, run, sinks, verify
from bench.database import PREFIX, drop_database
from bench.errors import BenchError
from bench.report import Figures
from bench.report import as_json as fresh_json
from bench.settings import bench_settings
from worker import (
    access,
    addresses,
    apikeys,
    campaigns,
    db,
    feed,
    ledger,
    logs,
    passwords,
    privacy,
    queue,
)
from worker.settings import ServiceUrls, Settings
from worker.web import app as web_app

# Bump when the fill changes: a template of another version is filled again.
FILL_VERSION = 1
CLIENTS = 20
MAX_CAMPAIGNS = 1_000
PER_CAMPAIGN = 10_000
MIN_CAMPAIGNS = 20
# Rows of invitations per INSERT statement (progress lines, bounded transactions).
FILL_CHUNK = 1_000_000
# Campaigns with reminders (one round, three days after the first message) are those whose
# number is a multiple of this; their last 2/5 of rows are the reminders.
REMINDER_EVERY = 3
RETENTION_DAYS = 365
# The clients were created this long before the fill (which the later phase reads back).
CLIENTS_BEFORE = timedelta(days=400)
# The interactive answers' target (issue 24): p99 under this many seconds.
TARGET_P99 = 0.2
TARGET_SEND_SHARE = 0.9
TARGET_PURGE_SECONDS = 60.0
OPS_USER = ("bench", "a long passphrase for the bench")
# Runs of each interactive answer: p99 is the second slowest of 200.
REPEAT = 200


@dataclass(frozen=True)
class Plan:
    """The shape of a history of `invitations` rows."""

    invitations: int

    @property
    def campaigns(self) -> int:
        return max(MIN_CAMPAIGNS, min(MAX_CAMPAIGNS, self.invitations // PER_CAMPAIGN))

    @property
    def size(self) -> int:
        """Rows per campaign (the last one takes the remainder)."""
        return self.invitations // self.campaigns

    @property
    def first_share(self) -> int:
        """In a campaign with reminders, rows before this index are first messages."""
        return (3 * self.size + 4) // 5

    @property
    def people(self) -> int:
        """The panel: each person is invited about eight times over the year."""
        return max(2 * self.size, self.invitations // 8)

    @property
    def expired(self) -> int:
        """Campaigns that ended one day before the retention window: one day's purge."""
        return max(1, round(self.campaigns / 366))

    @property
    def database(self) -> str:
        return f"history_{self.invitations}"


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC-SHA256's inner and outer padded keys (RFC 2104), so that Postgres computes
    `addresses.address_hash` as sha256(opad || sha256(ipad || address))."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def email(person: int) -> str:
    """The address of the history's person `person`."""
    return f"panel{person}@example.org"


def _client(expression: str) -> str:
    """SQL for the id of client number `expression` (0-based), h01 to h20."""
    return f"'h' || lpad(({expression} % {CLIENTS} + 1)::text, 2, '0')"


HASH = "sha256($2::bytea || sha256($1::bytea || convert_to({address}, 'UTF8')))"

CAMPAIGNS_SQL = f"""
INSERT INTO campaigns (id, client_id, name, kind, template, locale, survey_url, status,
                       created_at, completed_at, dispatched_through, reminders,
                       reminder_interval, reminder_rounds_created)
OVERRIDING SYSTEM VALUE
SELECT c + 1, {_client("c")}, 'History ' || c, kind, 'invitation', 'en',
       'https://survey.history.example.org/s/' || c, status,
       coalesce(done - interval '7 days', $1::timestamptz - interval '2 days'), done,
       CASE WHEN status = 'completed' THEN (c + 1) * $3::bigint ELSE 0 END,
       reminders, CASE WHEN reminders > 0 THEN interval '3 days' END, reminders
FROM (SELECT c, kind, status,
             CASE WHEN kind = 'survey' AND c % {REMINDER_EVERY} = 0 AND status <> 'paused'
                  THEN 1 ELSE 0 END AS reminders,
             CASE WHEN status = 'paused' THEN NULL
                  WHEN c < $4
                  THEN $1::timestamptz - interval '366 days' + (c + 0.5) * interval '1 day' / $4
                  ELSE $1::timestamptz - interval '365 days'
                       + (c - $4 + 1) * interval '365 days' / ($2 - 2 - $4) END AS done
      FROM generate_series(0, $2 - 1) c,
           LATERAL (SELECT CASE WHEN c % 10 = 9 THEN 'marketing' ELSE 'survey' END AS kind,
                           CASE WHEN c >= $2 - 2 THEN 'paused'
                                WHEN c % 25 = 7 THEN 'cancelled'
                                ELSE 'completed' END AS status) k) p
"""

# $1 ipad, $2 opad, $3 first row, $4 end row, $5 rows per campaign, $6 campaigns,
# $7 first-message share, $8 people. u is a pseudo-random number in [0, 1000) per row.
INVITATIONS_SQL = f"""
INSERT INTO invitations (id, campaign_id, email, email_hash, locale, vars, state, reason,
                         attempts, smtp_code, message_id, sent_at, first_attempt_at,
                         updated_at, completed_at, round, parent_id, claimed_by)
OVERRIDING SYSTEM VALUE
SELECT g + 1, cp.id, e.address, {HASH.format(address="e.address")},
       (ARRAY['en', 'nl', 'fr'])[g % 3 + 1],
       jsonb_build_object('first_name',
                          (ARRAY['Anna', 'Bram', 'Chloé', 'Daan', 'Émile', 'Femke'])[g % 6 + 1]),
       s.state, s.reason,
       CASE WHEN s.state IN ('sent', 'failed', 'unknown') THEN 1 ELSE 0 END,
       CASE s.state WHEN 'sent' THEN 250 WHEN 'failed' THEN 550 END,
       CASE WHEN s.state = 'sent' THEN '<' || (g + 1) || '.history@mail.example.org>' END,
       t.sent_at, t.sent_at, coalesce(t.sent_at, cp.created_at),
       CASE WHEN cp.kind = 'survey' AND NOT r.reminder AND s.state = 'sent'
                 AND NOT r.followed AND d.u % 5 = 0
            THEN t.sent_at + interval '1 day' END,
       CASE WHEN r.reminder THEN 1 ELSE 0 END,
       CASE WHEN r.reminder THEN (cp.id - 1) * $5 + d.j0 + 1 END,
       CASE WHEN s.state IN ('sent', 'failed', 'unknown') THEN 'history' END
FROM generate_series($3::bigint, $4::bigint - 1) g
CROSS JOIN LATERAL (SELECT least(g / $5, $6 - 1) AS c) a
JOIN campaigns cp ON cp.id = a.c + 1
CROSS JOIN LATERAL (SELECT g - a.c * $5 AS j) b
CROSS JOIN LATERAL (SELECT cp.reminders > 0 AND b.j >= $7 AS reminder,
                           cp.reminders > 0 AND b.j < $5 - $7 AS followed) r
CROSS JOIN LATERAL (SELECT CASE WHEN r.reminder THEN b.j - $7 ELSE b.j END AS j0,
                           ((g * 2654435761) % 1000)::int AS u) d
CROSS JOIN LATERAL (SELECT 'panel' || ((d.j0 + a.c * 7919) % $8) || '@example.org' AS address) e
CROSS JOIN LATERAL (
    SELECT CASE
             WHEN cp.status = 'paused' THEN CASE WHEN d.u < 500 THEN 'sent' ELSE 'pending' END
             WHEN r.reminder OR r.followed THEN
                  CASE WHEN r.reminder AND d.u < 30 THEN 'suppressed' ELSE 'sent' END
             WHEN cp.status = 'cancelled' AND d.u >= 600 THEN 'cancelled'
             WHEN d.u < 55 THEN 'suppressed'
             WHEN d.u < 78 THEN 'failed'
             WHEN d.u < 79 THEN 'unknown'
             ELSE 'sent' END AS state,
           CASE
             WHEN cp.status = 'paused' OR r.followed THEN NULL
             WHEN r.reminder THEN CASE WHEN d.u < 30 THEN 'client_opt_out' END
             WHEN cp.status = 'cancelled' AND d.u >= 600 THEN NULL
             WHEN d.u < 40 THEN 'client_opt_out'
             WHEN d.u < 55 THEN 'bounced'
             WHEN d.u < 75 THEN 'hard_bounce'
             WHEN d.u < 78 THEN 'retry_horizon'
             WHEN d.u < 79 THEN 'no_reply_after_data' END AS reason) s
CROSS JOIN LATERAL (
    SELECT CASE WHEN s.state IN ('sent', 'failed', 'unknown')
                THEN cp.created_at + d.j0::float8 / $5 * interval '1 hour'
                     + CASE WHEN r.reminder THEN interval '3 days' ELSE interval '0' END
           END AS sent_at) t
"""

PEOPLE_SQL = f"""
CREATE TEMPORARY TABLE people ON COMMIT DROP AS
SELECT p, address, {HASH.format(address="address")} AS email_hash
FROM generate_series(0, $3::bigint - 1) p,
     LATERAL (SELECT 'panel' || p || '@example.org' AS address) a
"""

# Everything but the invitations, in one transaction with the `people` table; $1 the
# fill's time. Per client 5 % of the panel opted out over the year (their feed events
# written as the table's trigger writes them), 1 % on the marketing list, a few
# resubscribed or erased; feedback and the bounce list from the failed and some sent
# invitations; a contact count per person; survey references for a quarter of the
# campaigns.
REST_SQL = [
    f"""INSERT INTO client_opt_outs (client_id, email_hash, email, source, created_at)
        SELECT {_client("p")}, email_hash, address, 'one_click',
               $1::timestamptz - interval '365 days' * ((p * 7919 % 1000) / 1000.0)
        FROM people ORDER BY 5, 1, 2""",
    # What the table's trigger writes for each of them (it is off during the load).
    """INSERT INTO opt_out_feed (xid, client_id, kind, email_hash, email, at)
       SELECT pg_current_xact_id()::text::bigint, client_id, 'opt_out', email_hash, email,
              created_at
       FROM client_opt_outs ORDER BY created_at, client_id, email_hash""",
    # Resubscriptions and erasures go through the triggers.
    "SET session_replication_role = origin",
    """INSERT INTO opt_out_audit (action, scope, email_hash, actor, created_at)
       SELECT 'opt_out', 'client:' || client_id, email_hash, 'recipient', created_at
       FROM client_opt_outs ORDER BY created_at""",
    """INSERT INTO marketing_opt_outs (email_hash, email, source, created_at)
       SELECT email_hash, address, 'one_click', $1::timestamptz - interval '1 day' * (p % 365)
       FROM people WHERE p % 100 = 37""",
    """INSERT INTO opt_out_audit (action, scope, email_hash, actor, created_at)
       SELECT 'opt_out', 'marketing', email_hash, 'recipient', created_at
       FROM marketing_opt_outs""",
    """WITH gone AS (
           DELETE FROM client_opt_outs o USING people
           WHERE people.p % 2000 = 20 AND o.email_hash = people.email_hash
           RETURNING o.client_id, o.email_hash)
       INSERT INTO opt_out_audit (action, scope, email_hash, actor, reason)
       SELECT 'resubscribe', 'client:' || client_id, email_hash, 'privacy@firm.example.org',
              'asked by phone'
       FROM gone""",
    """INSERT INTO opt_out_audit (action, scope, email_hash, actor, reason)
       SELECT 'erase', 'all', email_hash, 'privacy@firm.example.org', 'deletion request'
       FROM people WHERE p % 5000 = 41 ORDER BY p""",
    """UPDATE invitations i SET email = NULL, vars = '{}'
       FROM people WHERE people.p % 5000 = 41 AND i.email_hash = people.email_hash""",
    """UPDATE client_opt_outs o SET email = NULL
       FROM people WHERE people.p % 5000 = 41 AND o.email_hash = people.email_hash""",
    """UPDATE marketing_opt_outs o SET email = NULL
       FROM people WHERE people.p % 5000 = 41 AND o.email_hash = people.email_hash""",
    """INSERT INTO feedback (invitation_id, campaign_id, email_hash, kind, status, source,
                             created_at)
       SELECT id, campaign_id, email_hash, k.kind, k.status, k.source,
              sent_at + interval '10 minutes'
       FROM invitations i,
            LATERAL (SELECT ((i.id * 2654435761) % 1000)::int AS u) d,
            LATERAL (SELECT CASE WHEN i.state = 'failed' AND i.reason = 'hard_bounce'
                                 THEN 'hard'
                                 WHEN i.state = 'sent' AND d.u >= 985 THEN 'soft'
                                 WHEN i.state = 'sent' AND d.u >= 983 THEN 'complaint' END
                                 AS kind,
                            CASE WHEN i.state = 'failed' THEN 'smtp'
                                 WHEN d.u >= 985 THEN 'verp' ELSE 'ses' END AS source,
                            CASE WHEN i.state = 'failed' THEN '5.1.1'
                                 WHEN d.u >= 985 THEN '4.2.2' END AS status) k
       WHERE k.kind IS NOT NULL""",
    """INSERT INTO bounces (email_hash, kind, smtp_code, created_at)
       SELECT DISTINCT ON (email_hash) email_hash,
              CASE kind WHEN 'complaint' THEN 'complaint' ELSE 'hard' END,
              CASE kind WHEN 'hard' THEN 550 END, created_at
       FROM feedback WHERE kind IN ('hard', 'complaint')
       ORDER BY email_hash, created_at""",
    """INSERT INTO contact_counts (email_hash, invitation_ids, counted_at)
       SELECT email_hash, ARRAY[p + 1, p + 2],
              ARRAY[$1::timestamptz - interval '1 day' * (p % 366),
                    $1::timestamptz - interval '1 day' * (p % 30)]
       FROM people ORDER BY email_hash""",
    """INSERT INTO survey_refs (invitation_id, ref_prefix)
       SELECT i.id, ('x' || substr(md5(i.id::text), 1, 16))::bit(64)::bigint
       FROM invitations i JOIN campaigns c ON c.id = i.campaign_id
       WHERE c.kind = 'survey' AND c.id % 4 = 2 AND i.round = 0""",
    """INSERT INTO survey_ref_campaigns (campaign_id, indexed_at)
       SELECT id, created_at FROM campaigns WHERE kind = 'survey' AND id % 4 = 2""",
]


def say(text: str) -> None:
    run.say(f"history: {text}")


async def fill(conn: asyncpg.Connection, plan: Plan, hash_key: bytes) -> None:
    """Fill a migrated, empty database with the history of `plan` (see the module)."""
    await load_invitations(conn, plan, hash_key)
    await load_rest(conn, plan, hash_key)


async def _session(conn: asyncpg.Connection) -> None:
    # The fill's own transactions need not wait for the disk; the runs' settings are the
    # cluster's, untouched.
    await conn.execute("SET synchronous_commit = off")
    await conn.execute("SET maintenance_work_mem = '256MB'")
    await conn.execute("SET work_mem = '64MB'")


async def load_invitations(conn: asyncpg.Connection, plan: Plan, hash_key: bytes) -> None:
    """The clients, the campaigns and their invitations (the fill's first, long phase)."""
    ipad, opad = hmac_pads(hash_key)
    await _session(conn)
    at = await conn.fetchval("SELECT now()")
    await conn.execute(
        f"""INSERT INTO clients (id, name, sender_email, created_at)
            SELECT {_client("k")}, 'History client ' || (k + 1),
                   'surveys@h' || (k + 1) || '.example.org', $1::timestamptz - $2::interval
            FROM generate_series(0, {CLIENTS - 1}) k""",
        at,
        CLIENTS_BEFORE,
    )
    await conn.execute(CAMPAIGNS_SQL, at, plan.campaigns, plan.size, plan.expired)
    # Indexes that back no constraint are built after the load (sorted, not 10 million
    # random insertions), exactly as the migrations define them.
    indexes = await conn.fetch(
        """SELECT indexname, indexdef FROM pg_indexes
           WHERE schemaname = current_schema() AND tablename = 'invitations'
             AND indexname NOT IN (SELECT conname FROM pg_constraint
                                   WHERE conrelid = 'invitations'::regclass)"""
    )
    for index in indexes:
        await conn.execute(f"DROP INDEX {index['indexname']}")
    # Foreign keys and triggers off for the load (the rows are made consistent): a check
    # per row doubled its time.
    await conn.execute("SET session_replication_role = replica")
    for first in range(0, plan.invitations, FILL_CHUNK):
        end = min(first + FILL_CHUNK, plan.invitations)
        started = time.monotonic()
        await conn.execute(
            INVITATIONS_SQL,
            ipad,
            opad,
            first,
            end,
            plan.size,
            plan.campaigns,
            plan.first_share,
            plan.people,
        )
        say(f"invitations: {end:,} of {plan.invitations:,} ({time.monotonic() - started:.0f} s)")
    await conn.execute("SET session_replication_role = origin")
    started = time.monotonic()
    for index in indexes:
        await conn.execute(index["indexdef"])
    say(f"indexes of invitations ({time.monotonic() - started:.0f} s)")


async def load_rest(conn: asyncpg.Connection, plan: Plan, hash_key: bytes) -> None:
    """Everything the invitations leave: lists, feed, audit, feedback, counts (REST_SQL)."""
    ipad, opad = hmac_pads(hash_key)
    await _session(conn)
    at = await conn.fetchval("SELECT max(created_at) + $1::interval FROM clients", CLIENTS_BEFORE)
    async with conn.transaction():
        await conn.execute(PEOPLE_SQL, ipad, opad, plan.people)
        await conn.execute("SET session_replication_role = replica")
        for sql in REST_SQL:
            started = time.monotonic()
            await conn.execute(sql, *((at,) if "$1" in sql else ()))
            say(f"{' '.join(sql.split()[:3]).lower()} ({time.monotonic() - started:.0f} s)")
    for table in ("campaigns", "invitations", "opt_out_audit", "opt_out_feed", "feedback"):
        await conn.execute(
            f"""SELECT setval(pg_get_serial_sequence('{table}', 'id'),
                              (SELECT max(id) FROM {table}))"""
        )
    started = time.monotonic()
    await conn.execute("VACUUM (ANALYZE)")
    say(f"vacuum analyze ({time.monotonic() - started:.0f} s)")


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def _stamp(plan: Plan, hash_key: bytes) -> str:
    """What a template's COMMENT says: the fill's version and the hash key it used."""
    key = hashlib.sha256(hash_key).hexdigest()[:16]
    return f"survey-worker history v{FILL_VERSION} {plan.invitations} key {key}"


async def template(admin_url: str, plan: Plan, hash_key: bytes) -> float | None:
    """Make sure the template `plan.database` exists, filled and migrated; the seconds the
    fill took, or None when an earlier run's template was reused. A fill interrupted after
    its invitations were loaded resumes from there."""
    stamp, loaded = _stamp(plan, hash_key), f"{_stamp(plan, hash_key)} invitations"
    partial = f"{plan.database}_partial"
    admin = await asyncpg.connect(admin_url)
    try:
        comments = {
            r["datname"]: r["comment"]
            for r in await admin.fetch(
                """SELECT datname, shobj_description(oid, 'pg_database') AS comment
                   FROM pg_database WHERE datname = ANY($1::text[])""",
                [plan.database, partial],
            )
        }
        if comments.get(plan.database) == stamp:
            seconds = None
        else:
            await admin.execute(f"DROP DATABASE IF EXISTS {plan.database} WITH (FORCE)")
            started = time.monotonic()
            if comments.get(partial) != loaded:
                await admin.execute(f"DROP DATABASE IF EXISTS {partial} WITH (FORCE)")
                await admin.execute(f"CREATE DATABASE {partial}")
                say(f"filling {plan.invitations:,} invitations into {partial} (once; kept)")
                conn = await asyncpg.connect(_with_database(admin_url, partial))
                try:
                    await db.migrate(conn)
                    await load_invitations(conn, plan, hash_key)
                finally:
                    await conn.close()
                await admin.execute(f"COMMENT ON DATABASE {partial} IS '{loaded}'")
            else:
                say(f"resuming the fill of {partial} after its invitations")
            conn = await asyncpg.connect(_with_database(admin_url, partial))
            try:
                await load_rest(conn, plan, hash_key)
            finally:
                await conn.close()
            seconds = time.monotonic() - started
            say(f"filled in {seconds:.0f} s")
            await admin.execute(f"ALTER DATABASE {partial} RENAME TO {plan.database}")
            await admin.execute(f"COMMENT ON DATABASE {plan.database} IS '{stamp}'")
    finally:
        await admin.close()
    # Migrations written since the fill apply to the template (they are idempotent).
    conn = await asyncpg.connect(_with_database(admin_url, plan.database))
    try:
        applied = await db.migrate(conn)
        if applied:
            say(f"migrated the template: {', '.join(applied)}")
            await conn.execute("VACUUM (ANALYZE)")
    finally:
        await conn.close()
    return seconds


@contextlib.asynccontextmanager
async def copy_of(admin_url: str, plan: Plan) -> AsyncIterator[str]:
    """A copy of the template for one run, dropped after (a killed run's copy goes with the
    next run's stale `bench_` databases)."""
    name = f"{PREFIX}{os.getpid()}_history"
    admin = await asyncpg.connect(admin_url)
    try:
        started = time.monotonic()
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {plan.database} STRATEGY FILE_COPY")
        say(f"copied the template in {time.monotonic() - started:.0f} s")
    finally:
        await admin.close()
    try:
        yield _with_database(admin_url, name)
    finally:
        await drop_database(admin_url, name)


@dataclass(frozen=True)
class Timing:
    """One measured answer: its name, how often it ran, p50 and p99 in seconds."""

    name: str
    runs: int
    p50: float
    p99: float
    interactive: bool = True

    @property
    def met(self) -> bool | None:
        return self.p99 <= TARGET_P99 if self.interactive else None


def percentile(samples: list[float], share: float) -> float:
    """The nearest-rank percentile of `samples`."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


async def timed(name: str, repeat: int, call: Callable[[int], Awaitable[object]]) -> Timing:
    """Run `call(i)` once to warm up, then `repeat` times; its p50 and p99."""
    await call(0)
    samples = []
    for i in range(repeat):
        started = time.perf_counter()
        await call(i + 1)
        samples.append(time.perf_counter() - started)
    result = Timing(name, repeat, statistics.median(samples), percentile(samples, 0.99))
    say(f"{name}: p50 {result.p50 * 1000:.1f} ms, p99 {result.p99 * 1000:.1f} ms")
    return result


async def once(name: str, call: Callable[[], Awaitable[object]]) -> tuple[Timing, object]:
    """Run `call()` once, timed (a background job: no p99 target)."""
    started = time.perf_counter()
    value = await call()
    seconds = time.perf_counter() - started
    say(f"{name}: {seconds:.2f} s")
    return Timing(name, 1, seconds, seconds, interactive=False), value


@dataclass
class HistoryFigures:
    """What a history run measured, next to the fresh run's figures."""

    invitations: int
    campaigns: int
    clients: int
    rows: dict[str, int]
    database_bytes: int
    fill_seconds: float | None
    copy_seconds: float
    fresh: Figures
    sent_invitations_per_s: float
    sent_seconds: float
    import_seconds: float
    timings: list[Timing]
    purged_campaigns: int
    purged_invitations: int
    purge_seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def send_share(self) -> float:
        return self.sent_invitations_per_s / self.fresh.invitations_per_s


def as_table(f: HistoryFigures) -> str:
    """The history run's figures for a terminal."""
    rows = ", ".join(f"{table} {n:,}" for table, n in f.rows.items())
    fill = "reused" if f.fill_seconds is None else f"{f.fill_seconds:.0f} s"
    lines = [
        f"survey-worker bench on a history: {f.invitations:,} invitations, "
        f"{f.campaigns:,} campaigns, {f.clients} clients; database {f.database_bytes / 1e9:.1f} GB",
        f"rows: {rows}",
        f"fill: {fill}; copy of the template: {f.copy_seconds:.0f} s",
        "",
        f"{'measurement':<36} {'runs':>5} {'p50':>10} {'p99':>10}  target",
    ]
    for t in f.timings:
        target = f"p99 < {TARGET_P99 * 1000:.0f} ms  {_mark(t.met)}" if t.interactive else ""
        lines.append(
            f"{t.name:<36} {t.runs:>5} {t.p50 * 1000:>7.1f} ms {t.p99 * 1000:>7.1f} ms  {target}"
        )
    lines += [
        "",
        f"sending {f.fresh.recipients:,}: fresh {f.fresh.invitations_per_s:,.0f} invitations/s, "
        f"on the history {f.sent_invitations_per_s:,.0f} ({f.send_share:.0%}; target >= "
        f"{TARGET_SEND_SHARE:.0%})  {_mark(f.send_share >= TARGET_SEND_SHARE)}",
        f"launch (import) of {f.fresh.recipients:,}: fresh {f.fresh.import_seconds:.2f} s, "
        f"on the history {f.import_seconds:.2f} s",
        f"purge of one day's expired campaigns ({f.purged_campaigns}, "
        f"{f.purged_invitations:,} invitations): {f.purge_seconds:.1f} s (target < "
        f"{TARGET_PURGE_SECONDS:.0f} s)  {_mark(f.purge_seconds < TARGET_PURGE_SECONDS)}",
    ]
    if f.problems:
        lines += ["", "VERIFICATION FAILED:", *(f"  {p}" for p in f.problems)]
    return "\n".join(lines)


def _mark(met: bool | None) -> str:
    return "" if met is None else ("met" if met else "MISSED")


def as_json(f: HistoryFigures) -> str:
    """The history run's figures as one JSON object."""
    values = asdict(f)
    values["fresh"] = json.loads(fresh_json(f.fresh))
    values["send_share"] = f.send_share
    return json.dumps(values, indent=2, default=str)


async def table_rows(conn: asyncpg.Connection) -> dict[str, int]:
    """Rows of the history's tables (exact counts)."""
    tables = (
        "campaigns",
        "invitations",
        "client_opt_outs",
        "marketing_opt_outs",
        "bounces",
        "feedback",
        "opt_out_feed",
        "opt_out_audit",
        "contact_counts",
        "survey_refs",
    )
    return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in tables}


@dataclass(frozen=True)
class Subjects:
    """What the interactive answers ask about: a history client, its key and campaign,
    a person of the history, the feed's cursors."""

    client_id: str
    api_key: str
    history_campaign: int
    person: str
    feed_cursors: list[str]
    yesterday_cursor: str


async def subjects(conn: asyncpg.Connection) -> Subjects:
    """Pick the measured subjects in the history (the client with the most opt-outs)."""
    client_id = await conn.fetchval(
        "SELECT client_id FROM client_opt_outs GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
    )
    _key_id, key = await apikeys.create(conn, client_id, name="bench")
    campaign_id = await conn.fetchval(
        """SELECT max(id) FROM campaigns WHERE client_id = $1 AND status = 'completed'""",
        client_id,
    )
    # The person invited most often: every section of an access request has rows.
    person = await conn.fetchval(
        """SELECT email FROM invitations
           WHERE email IS NOT NULL
             AND email_hash IN (SELECT email_hash FROM client_opt_outs LIMIT 1000)
           GROUP BY email ORDER BY count(*) DESC, email LIMIT 1"""
    )
    cursors = [
        f"{r['xid']}-{r['id']}"
        for r in await conn.fetch(
            """SELECT xid, id FROM opt_out_feed WHERE client_id = $1
               ORDER BY random() LIMIT 50""",
            client_id,
        )
    ]
    last = await conn.fetchrow(
        """SELECT xid, id FROM opt_out_feed
           WHERE client_id = $1
             AND at < (SELECT max(at) FROM opt_out_feed WHERE client_id = $1) - interval '1 day'
           ORDER BY xid DESC, id DESC LIMIT 1""",
        client_id,
    )
    yesterday = f"{last['xid']}-{last['id']}" if last else ""
    return Subjects(client_id, key, campaign_id, person, cursors, yesterday)


async def interactive(
    conn: asyncpg.Connection,
    settings: Settings,
    database_url: str,
    redis_url: str,
    *,
    campaign_id: int,
    who: Subjects,
    repeat: int,
) -> list[Timing]:
    """The answers a person waits for, each `repeat` times, on the history."""
    # Each answer's log lines (hundreds of them) would drown the progress lines.
    logs.configure(fmt="console", level="WARNING", stream=sys.stderr)
    web_settings = settings.model_copy(
        update={
            "ops_users": SecretStr(f"{OPS_USER[0]}:{passwords.hash_password(OPS_USER[1])}"),
            "api_rate_limit": 0,
        }
    )
    basic = base64.b64encode(f"{OPS_USER[0]}:{OPS_USER[1]}".encode()).decode()
    bearer = {"Authorization": f"Bearer {who.api_key}"}
    hash_key = settings.hash_key()
    server = web_app.server(
        web_app.create_app(web_settings, database_url, redis_url), host="127.0.0.1", port=0
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]

    async def get(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
        response = await client.get(path, headers=headers)
        if response.status_code != 200:
            raise BenchError(f"GET {path}: {response.status_code} {response.text[:200]}")

    cursors = who.feed_cursors
    results = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            results.append(
                await timed(
                    "status (the campaign just sent)",
                    repeat,
                    lambda _i: campaigns.status_report(conn, campaign_id),
                )
            )
            results.append(
                await timed(
                    "status (a history campaign)",
                    repeat,
                    lambda _i: campaigns.status_report(conn, who.history_campaign),
                )
            )
            results.append(
                await timed(
                    "GET /ops",
                    repeat,
                    lambda _i: get(client, "/ops", {"Authorization": f"Basic {basic}"}),
                )
            )
            results.append(
                await timed(
                    "GET /v1/campaigns/{id}",
                    repeat,
                    lambda _i: get(client, f"/v1/campaigns/{who.history_campaign}", bearer),
                )
            )
            results.append(
                await timed(
                    "GET /v1/opt-outs (a page of 100)",
                    repeat,
                    lambda i: get(
                        client,
                        f"/v1/opt-outs?limit=100&after={cursors[i % len(cursors)]}",
                        bearer,
                    ),
                )
            )
    finally:
        server.should_exit = True
        await serving
    address = addresses.normalise(who.person)
    email_hash = addresses.address_hash(hash_key, address)
    results.append(
        await timed(
            "access-request",
            repeat,
            lambda _i: access.request(conn, email=address, email_hash=email_hash, actor="bench"),
        )
    )
    return results


async def background(
    conn: asyncpg.Connection, *, campaign_id: int, who: Subjects, repeat: int
) -> tuple[list[Timing], privacy.PurgeReport]:
    """The crons on the history: the reminder scan, the feed drops, the purge."""
    results = [
        await timed(
            "reminder scan (reconcile's pass)",
            repeat,
            lambda _i: ledger.create_due_reminders(conn),
        )
    ]
    # The new campaign's round comes due: its creation is the scan's heaviest pass.
    sent = await conn.fetchval(
        "SELECT count(*) FROM invitations WHERE campaign_id = $1 AND state = 'sent'", campaign_id
    )
    await conn.execute(
        """UPDATE campaigns SET status = 'running', completed_at = NULL, reminders = 1,
                                reminder_interval = interval '1 second'
           WHERE id = $1""",
        campaign_id,
    )
    await asyncio.sleep(1.0)
    timing, _ = await once(
        f"reminder scan creating a round of {sent:,}",
        lambda: ledger.create_due_reminders(conn),
    )
    results.append(timing)
    with tempfile.TemporaryDirectory(prefix="survey-bench-feed-") as folder:
        directory = Path(folder) / "daily"

        async def daily(i: int) -> None:
            await conn.execute(
                """INSERT INTO feed_drops (client_id, directory, daily, cursor, last_drop_at)
                   VALUES ($1, $2, true, $3, now() - interval '1 day')
                   ON CONFLICT (client_id, directory) DO UPDATE SET cursor = $3""",
                who.client_id,
                str(directory),
                who.yesterday_cursor,
            )
            await feed.drop(conn, who.client_id, directory)

        results.append(await timed("daily feed drop (a day of events)", repeat, daily))
        timing, _ = await once(
            "first feed drop (the whole list)",
            lambda: feed.drop(conn, who.client_id, Path(folder) / "first"),
        )
        results.append(timing)
    # One day's expired campaigns: the template's age moves the retention window with it.
    age = await conn.fetchval(
        "SELECT extract(day FROM now() - max(completed_at))::int FROM campaigns WHERE id <> $1",
        campaign_id,
    )
    timing, report = await once(
        "daily purge",
        lambda: privacy.purge(conn, retention_days=RETENTION_DAYS + max(0, age)),
    )
    results.append(timing)
    assert isinstance(report, privacy.PurgeReport)
    return results, report


async def measure(
    args: argparse.Namespace,
    urls: ServiceUrls,
    fresh: Callable[[argparse.Namespace, ServiceUrls], Awaitable[Figures]],
) -> HistoryFigures:
    """The fresh run, then the same campaign and the answers on the history."""
    say("the fresh figure first: the ordinary run on an empty database")
    fresh_figures = await fresh(args, urls)
    say(f"fresh: {fresh_figures.invitations_per_s:,.0f} invitations/s")
    plan = Plan(args.history)
    probe = bench_settings(
        database_url=urls.database_url,
        redis_url=urls.redis_url,
        smtp_port=1,
        data_dir=run.DATA_DIR,
        slice_size=args.slice_size,
        smtp_connections=args.smtp_connections,
    )
    fill_seconds = await template(urls.database_url, plan, probe.hash_key())
    started = time.monotonic()
    async with copy_of(urls.database_url, plan) as database_url:
        copy_seconds = time.monotonic() - started
        return await _on_history(
            args, urls, plan, database_url, fresh_figures, fill_seconds, copy_seconds
        )


async def _on_history(
    args: argparse.Namespace,
    urls: ServiceUrls,
    plan: Plan,
    database_url: str,
    fresh_figures: Figures,
    fill_seconds: float | None,
    copy_seconds: float,
) -> HistoryFigures:
    with (
        run.dump_folder() as dump_dir,
        sinks.running(dump_dir, run.RUN_DIR / "sink.log", builtin=args.builtin_sink) as sink,
    ):
        settings = run.settings_for(args, database_url, urls.redis_url, sink.port)
        redis = await queue.connect(urls.redis_url)
        conn = await asyncpg.connect(database_url)
        try:
            await redis.flushdb()
            rows = await table_rows(conn)
            size = await conn.fetchval("SELECT pg_database_size(current_database())")
            recipients, imported, sent, counts = await run.import_and_send(
                conn, redis, settings, args, sink, reminders=0
            )
            who = await subjects(conn)
            timings = await interactive(
                conn,
                settings,
                database_url,
                urls.redis_url,
                campaign_id=imported.campaign_id,
                who=who,
                repeat=REPEAT,
            )
            crons, purged = await background(
                conn, campaign_id=imported.campaign_id, who=who, repeat=REPEAT
            )
        finally:
            await conn.close()
            await redis.aclose()
        received = await asyncio.to_thread(dumps.read, dump_dir)
    seconds = max((received.last_accepted or sent.t0) - sent.t0, 1e-6)
    return HistoryFigures(
        invitations=plan.invitations,
        campaigns=plan.campaigns,
        clients=CLIENTS,
        rows=rows,
        database_bytes=size,
        fill_seconds=fill_seconds,
        copy_seconds=copy_seconds,
        fresh=fresh_figures,
        sent_invitations_per_s=recipients.total / seconds,
        sent_seconds=seconds,
        import_seconds=imported.seconds,
        timings=[*timings, *crons],
        purged_campaigns=purged.campaigns,
        purged_invitations=purged.invitations,
        purge_seconds=crons[-1].p50,
        problems=[
            *fresh_figures.problems,
            *verify.problems(recipients, imported, received.recipients, counts, sent.worker_exits),
        ],
    )


def main(
    args: argparse.Namespace,
    urls: ServiceUrls,
    fresh: Callable[[argparse.Namespace, ServiceUrls], Awaitable[Figures]],
) -> int:
    """Measure on the history, print the figures; 1 when a run did not verify."""
    figures = asyncio.run(measure(args, urls, fresh))
    print(as_json(figures) if args.json else as_table(figures))
    return 1 if figures.problems else 0
