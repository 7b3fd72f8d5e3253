"""A client's opt-out feed: pages of events after a cursor, and drops of it as files.

The events are written by triggers on the client's opt-out list (sql/007_client_api.sql):
`opt_out`, `resubscribe` and `erase`, each with its time and the address (None when it is
not held: an erasure, or an opt-out recorded after the address was gone). A page holds
only events of transactions that ended before every transaction still running began
(the snapshot's xmin), in the order (transaction id, event id); the cursor is the last
event's pair. So an event that commits late, after a later one was read, is still ahead
of every cursor handed out: no event is ever skipped, and none is repeated.

A drop (`survey-worker feed CLIENT_ID --output DIR`, and the daily `drop_feeds` cron for
the directories registered with `--daily`) writes the events since the directory's last
drop as a CSV file and a JSON manifest (`count`, `cursor`, `sha256` of the CSV), then moves
the directory's cursor on. A crash between the files and the cursor repeats those events
in the next drop (at least once), never skips them.

Who reads a feed (sql/013_feed_secrecy.sql): the client API only with the client's own
active key, which Postgres checks (`page_for_key`); drops only as a login in the
`feed_dropper` role (`page`, `drop`). The worker's and the web app's logins read no list.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import structlog

from worker.db import Conn, connect
from worker.errors import NotFound, PermissionDenied, SurveyWorkerError
from worker.privacy import in_role, spreadsheet_safe

log = structlog.get_logger("worker.feed")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Events read per page while writing a drop.
DROP_PAGE = 1000
CSV_HEADER = ("kind", "email", "at")
_CURSOR = re.compile(r"([0-9]{1,19})-([0-9]{1,19})")
_MAX_BIGINT = 2**63 - 1
# The group role that drops run as (sql/013_feed_secrecy.sql).
FEED_ROLE = "feed_dropper"


class BadCursor(SurveyWorkerError):
    """A cursor the feed never handed out."""


class KeyRefused(SurveyWorkerError):
    """Postgres found no active key of the client matching the presented one."""


@dataclass(frozen=True, order=True)
class Cursor:
    """A position in a client's feed: after the event (xid, event_id)."""

    xid: int = 0
    event_id: int = 0

    def __str__(self) -> str:
        return f"{self.xid}-{self.event_id}"


START = Cursor()


def parse_cursor(text: str | None) -> Cursor:
    """The cursor `text` stands for; empty or None is the feed's beginning. BadCursor
    for anything `str(Cursor)` could not have produced."""
    if not text:
        return START
    match = _CURSOR.fullmatch(text)
    if match is None:
        raise BadCursor("after: not a cursor this feed handed out")
    xid, event_id = int(match.group(1)), int(match.group(2))
    if xid > _MAX_BIGINT or event_id > _MAX_BIGINT:
        raise BadCursor("after: not a cursor this feed handed out")
    return Cursor(xid, event_id)


@dataclass(frozen=True)
class Event:
    """One change of a client's opt-out list."""

    kind: str
    email: str | None
    at: datetime

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "email": self.email, "at": iso(self.at)}


@dataclass(frozen=True)
class Page:
    """Events after a cursor, and the cursor to ask for the next page with."""

    events: list[Event]
    next_cursor: Cursor

    def as_json(self) -> dict[str, Any]:
        """The `GET /v1/opt-outs` answer."""
        return {
            "events": [e.as_json() for e in self.events],
            "next_cursor": str(self.next_cursor),
        }


def iso(at: datetime) -> str:
    """A time as the feed shows it: UTC, ISO 8601, microseconds (events of one second are
    still told apart)."""
    return at.astimezone(UTC).isoformat()


_PAGE_COLUMNS = "xid, id, kind, email, at"


def _page(rows: list[Any], after: Cursor) -> Page:
    events = [Event(r["kind"], r["email"], r["at"]) for r in rows]
    last = Cursor(rows[-1]["xid"], rows[-1]["id"]) if rows else after
    return Page(events, last)


async def page(conn: Conn, client_id: str, after: Cursor, limit: int) -> Page:
    """The client's events after `after`, oldest first, at most `limit` of them. Only for
    the `feed_dropper` and `privacy_officer` roles (drops)."""
    rows = await conn.fetch(
        f"SELECT {_PAGE_COLUMNS} FROM opt_out_feed_page($1, $2, $3, $4)",
        client_id,
        after.xid,
        after.event_id,
        limit,
    )
    return _page(rows, after)


async def page_for_key(conn: Conn, client_id: str, api_key: str, after: Cursor, limit: int) -> Page:
    """As `page`, for a request that presented `api_key`: Postgres returns the events only
    if the key is an active key of `client_id`; KeyRefused otherwise."""
    try:
        rows = await conn.fetch(
            f"SELECT {_PAGE_COLUMNS} FROM opt_out_feed_page_by_key($1, $2, $3, $4, $5)",
            client_id,
            api_key,
            after.xid,
            after.event_id,
            limit,
        )
    except asyncpg.InvalidAuthorizationSpecificationError as e:
        raise KeyRefused("not an active API key of this client") from e
    return _page(rows, after)


# --- drops -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drop:
    """What one drop wrote."""

    client_id: str
    csv_path: Path
    manifest_path: Path
    count: int
    cursor: Cursor
    sha256: str

    def as_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "csv": str(self.csv_path),
            "manifest": str(self.manifest_path),
            "count": self.count,
            "cursor": str(self.cursor),
            "sha256": self.sha256,
        }


def csv_bytes(events: Iterable[Event]) -> bytes:
    """The drop's CSV (`kind,email,at`), every cell spreadsheet-safe."""
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(CSV_HEADER)
    for event in events:
        writer.writerow(
            [spreadsheet_safe(c) for c in (event.kind, event.email or "", iso(event.at))]
        )
    return out.getvalue().encode()


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    temporary.replace(path)


def _prepare(directory: Path) -> Path:
    """The directory as an absolute path, created if missing."""
    directory = directory.resolve()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SurveyWorkerError(f"cannot create {directory}: {e.strerror}") from e
    return directory


def _write_files(csv_path: Path, data: bytes, manifest_path: Path, manifest: bytes) -> None:
    try:
        _write_atomically(csv_path, data)
        # The manifest last: its presence says the CSV is complete.
        _write_atomically(manifest_path, manifest)
    except OSError as e:
        raise SurveyWorkerError(f"cannot write the drop in {csv_path.parent}: {e.strerror}") from e


async def drop(conn: Conn, client_id: str, directory: Path, *, daily: bool | None = None) -> Drop:
    """Write the events since this directory's last drop for the client, then move the
    directory's cursor on. `daily` registers (True) or unregisters (False) the directory
    for the daily cron; None leaves that as it is. NotFound for an unknown client.

    Runs in the `feed_dropper` role: PermissionDenied, before anything is written, for a
    login that is not in it (the worker's and the web app's are not)."""
    async with in_role(conn, FEED_ROLE, "feed"):
        if not await conn.fetchval(
            "SELECT has_function_privilege('opt_out_feed_page(text, bigint, bigint, integer)',"
            " 'EXECUTE')"
        ):
            raise PermissionDenied(f"feed needs the {FEED_ROLE} role")
        return await _drop(conn, client_id, directory, daily=daily)


async def _drop(conn: Conn, client_id: str, directory: Path, *, daily: bool | None) -> Drop:
    if not await conn.fetchval("SELECT true FROM clients WHERE id = $1", client_id):
        raise NotFound(f"unknown client {client_id!r}")
    directory = await asyncio.to_thread(_prepare, directory)
    stored = await conn.fetchval(
        "SELECT cursor FROM feed_drops WHERE client_id = $1 AND directory = $2",
        client_id,
        str(directory),
    )
    after = start = parse_cursor(stored)
    events: list[Event] = []
    while True:
        batch = await page(conn, client_id, after, DROP_PAGE)
        events.extend(batch.events)
        after = batch.next_cursor
        if len(batch.events) < DROP_PAGE:
            break
    data = csv_bytes(events)
    digest = hashlib.sha256(data).hexdigest()
    now = datetime.now(UTC)
    stem = f"opt-outs-{client_id}-{now.strftime('%Y%m%dT%H%M%S%fZ')}"
    csv_path, manifest_path = directory / f"{stem}.csv", directory / f"{stem}.json"
    manifest = {
        "client_id": client_id,
        "csv": csv_path.name,
        "count": len(events),
        "after": str(start),
        "cursor": str(after),
        "sha256": digest,
        "created_at": iso(now),
    }
    await asyncio.to_thread(
        _write_files,
        csv_path,
        data,
        manifest_path,
        orjson.dumps(manifest, option=orjson.OPT_INDENT_2),
    )
    await conn.execute(
        """INSERT INTO feed_drops (client_id, directory, daily, cursor, last_drop_at)
           VALUES ($1, $2, coalesce($3, false), $4, now())
           ON CONFLICT (client_id, directory) DO UPDATE
           SET cursor = $4, last_drop_at = now(), daily = coalesce($3, feed_drops.daily)""",
        client_id,
        str(directory),
        daily,
        str(after),
    )
    result = Drop(client_id, csv_path, manifest_path, len(events), after, digest)
    log.info("feed.dropped", client_id=client_id, count=result.count, cursor=str(after))
    return result


async def scheduled(conn: Conn) -> list[tuple[str, Path]]:
    """The (client, directory) pairs registered for the daily drop."""
    rows = await conn.fetch(
        "SELECT client_id, directory FROM feed_drops WHERE daily ORDER BY client_id, directory"
    )
    return [(r["client_id"], Path(r["directory"])) for r in rows]


async def drop_feeds(ctx: Any) -> dict[str, Any]:
    """The daily cron job: a drop for every directory registered with `--daily`.

    Runs as FEED_DATABASE_URL's login (a member of `feed_dropper`), else as the worker's
    own, which a role-separated deployment does not let read a list: each drop is then
    logged as failed. Safe to run twice: a second run writes the events since the first
    (often none). One directory that cannot be written is logged and skipped; the others
    still get theirs.
    """
    settings = ctx.get("settings")
    url = settings.feed_database_url if settings is not None else None
    if url is None:
        async with ctx["pool"].acquire() as conn:
            return await _drop_scheduled(conn)
    conn = await connect(url, pool_mode=settings.database_pool_mode)
    try:
        return await _drop_scheduled(conn)
    finally:
        await conn.close()


async def _drop_scheduled(conn: Conn) -> dict[str, Any]:
    done = failed = 0
    for client_id, directory in await scheduled(conn):
        try:
            await drop(conn, client_id, directory)
        except SurveyWorkerError as e:
            failed += 1
            log.error("feed.drop_failed", client_id=client_id, error=str(e))
        else:
            done += 1
    return {"drops": done, "failed": failed}
