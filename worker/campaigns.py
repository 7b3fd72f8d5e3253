"""Clients and campaigns as the CLI and the campaign platform create them."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, Literal, get_args
from zoneinfo import ZoneInfo

import orjson
from redis.asyncio import Redis

from worker import (
    addresses,
    completion,
    feedback,
    imports,
    journal,
    ledger,
    links,
    queue,
    records,
    relay_config,
    schedule,
)
from worker.db import Conn
from worker.errors import (
    InvalidAddress,
    InvalidClient,
    InvalidUrl,
    LaunchConflict,
    LaunchProblem,
    NotFound,
    NoValidRecipient,
    RetryRefused,
    ScheduleProblem,
    TemplateProblem,
)
from worker.relays import route_report
from worker.render import TemplateStore
from worker.request_digest import RequestDigest
from worker.states import MOVES, Action, CampaignStatus


@dataclass(frozen=True)
class LaunchRequest:
    """What `survey-worker launch` asks for."""

    client_id: str
    template: str
    kind: str
    survey_url: str | None
    name: str
    locale: str
    # The client's key for this launch: launching again with it returns the first campaign.
    idempotency_key: str | None = None
    # Reminder rounds to those who have not answered, `reminder_interval` apart.
    reminders: int = 0
    reminder_interval: timedelta | None = None
    # The field period: ISO 8601 date-times (without an offset: in the client's time zone),
    # the send window's spec, and the daily cap.
    start_at: str | None = None
    close_at: str | None = None
    window: str | None = None
    per_day: int | None = None


# At most this many reminder rounds (a survey, not a drip campaign).
MAX_REMINDERS = 10
# The longest campaign name (`--name`, or the recipients file's name, cut to fit).
MAX_CAMPAIGN_NAME = 200


def name_of_file(filename: str) -> str:
    """A campaign name from a recipients file's name: the name itself, or when it is over
    MAX_CAMPAIGN_NAME characters its beginning, "…" and its extension (`.csv`)."""
    if len(filename) <= MAX_CAMPAIGN_NAME:
        return filename
    _, dot, extension = filename.rpartition(".")
    ending = "…" + (dot + extension if dot and len(extension) <= 10 else "")
    return filename[: MAX_CAMPAIGN_NAME - len(ending)] + ending


def check_request(request: LaunchRequest) -> None:
    """Refuse a launch request that can never work, before anything is read or written."""
    if len(request.name) > MAX_CAMPAIGN_NAME:
        raise LaunchProblem(f"--name must be at most {MAX_CAMPAIGN_NAME} characters")
    if not 0 <= request.reminders <= MAX_REMINDERS:
        raise LaunchProblem(f"--reminders must be from 0 to {MAX_REMINDERS}")
    if request.reminders and request.kind == "marketing":
        # A reminder asks again for an answer that marketing mail never asks for.
        raise LaunchProblem(
            "--reminders is only for survey campaigns; --kind marketing sends no reminders"
        )
    if request.reminders and request.reminder_interval is None:
        raise LaunchProblem("--reminders needs --reminder-interval, e.g. 3d")
    if not request.reminders and request.reminder_interval is not None:
        raise LaunchProblem("--reminder-interval needs --reminders N")
    if request.survey_url is not None:
        try:
            links.check_survey_url(request.survey_url)
        except InvalidUrl as e:
            raise LaunchProblem(f"--survey-url {e.reason}") from e
    field_period(request, schedule.zone("UTC"))


@dataclass(frozen=True)
class FieldPeriod:
    """A launch's field period, read: when it starts and closes (UTC), its window in
    canonical form, and its daily cap."""

    start_at: datetime | None
    close_at: datetime | None
    window: str | None
    per_day: int | None


def field_period(request: LaunchRequest, tz: ZoneInfo, now: datetime | None = None) -> FieldPeriod:
    """The request's field period, its date-times without an offset read in `tz` (the
    client's); ScheduleProblem naming the option when one cannot be used: a malformed
    window or date-time, a close not after the start (or already past, given `now`), a
    daily cap under 1."""
    try:
        window = None if request.window is None else str(schedule.parse(request.window))
    except schedule.ScheduleError as e:
        raise ScheduleProblem(f"--window: {e}") from e
    instants = []
    for option, text in (("--start-at", request.start_at), ("--close-at", request.close_at)):
        try:
            instants.append(None if text is None else schedule.parse_instant(text, tz))
        except schedule.ScheduleError as e:
            raise ScheduleProblem(f"{option}: {e}") from e
    start_at, close_at = instants
    if start_at is not None and close_at is not None and close_at <= start_at:
        raise ScheduleProblem("--close-at must be after --start-at")
    if close_at is not None and now is not None and close_at <= now:
        raise ScheduleProblem("--close-at must be in the future")
    if request.per_day is not None and request.per_day < 1:
        raise ScheduleProblem("--per-day must be 1 or more")
    return FieldPeriod(start_at, close_at, window, request.per_day)


@dataclass
class LaunchReport:
    """The created campaign and what happened to each line of the file.

    `existing`: an earlier launch with the same idempotency key created the campaign, and
    nothing was imported now (`rejected` is then empty: those lines were reported then).
    """

    campaign_id: int = 0
    imported: int = 0
    rejected: list[imports.Rejected] = field(default_factory=list)
    existing: bool = False
    # When the campaign is scheduled to start (None: it runs now).
    start_at: datetime | None = None


# The rule of the CHECK on clients.id, and the longest name clients.name takes.
CLIENT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
MAX_CLIENT_NAME = 200
# What a client's name, shown in the From and List-Id headers of every message of the
# client, must not hold: control characters (C0, DEL, C1), line and paragraph separators,
# and the bidirectional embeddings, overrides and isolates that reorder what is shown.
_NAME_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


async def add_client(
    conn: Conn,
    client_id: str,
    name: str,
    sender: str,
    *,
    relays: list[str] | None = None,
    timezone: str | None = None,
) -> bool:
    """Register a client, or update its name and sender; True if it is new. `relays`
    (checked with `check_route`) is its route; None leaves an existing client's route as
    it is, and a new client's is every relay. `timezone` (an IANA name) likewise: a new
    client's default is UTC.

    The name is stripped of surrounding white space. Raises InvalidClient, writing
    nothing, for an id that is not 1-63 lower-case letters, digits, '-' or '_', a name that
    is blank, longer than MAX_CLIENT_NAME or holds a line break or control character
    (no message of the client could carry it), a sender that is not a usable address,
    or a time zone that does not exist.
    """
    if not CLIENT_ID.fullmatch(client_id):
        raise InvalidClient(
            "a client id is 1-63 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    name = _client_name(name)
    try:
        sender = addresses.normalise(sender)
    except InvalidAddress as e:
        raise InvalidClient(f"--sender is not a usable address: {e.reason}") from e
    created: bool = await conn.fetchval(
        """INSERT INTO clients (id, name, sender_email, relays, timezone)
           VALUES ($1, $2, $3, $4, coalesce($5, 'UTC'))
           ON CONFLICT (id) DO UPDATE
           SET name = $2, sender_email = $3, relays = coalesce($4, clients.relays),
               timezone = coalesce($5, clients.timezone)
           RETURNING xmax = 0""",
        client_id,
        name,
        sender,
        relays,
        check_timezone(timezone),
    )
    return created


def _client_name(name: str) -> str:
    """The name stripped of surrounding white space; InvalidClient for a name no message of
    the client could carry."""
    name = name.strip()
    if not name:
        raise InvalidClient("--name must not be blank")
    if _NAME_FORBIDDEN.search(name):
        raise InvalidClient("--name must not hold a line break or control character")
    if len(name) > MAX_CLIENT_NAME:
        raise InvalidClient(f"--name must be at most {MAX_CLIENT_NAME} characters")
    return name


def check_timezone(name: str | None) -> str | None:
    """A client's time zone (`--timezone`), an IANA name; InvalidClient when there is no
    such zone."""
    if name is None:
        return None
    try:
        schedule.zone(name)
    except schedule.ScheduleError as e:
        raise InvalidClient(f"--timezone: {e}") from e
    return name


def check_route(names: Sequence[str], configured: Sequence[str]) -> list[str]:
    """The relays of a client's route (`--relays`), each named once in the order given.

    Raises InvalidClient for no name, a name that breaks the rule of SMTP_RELAYS or one that
    is not among the `configured` relays, naming those.
    """
    route = list(dict.fromkeys(name.strip() for name in names))
    if not route or "" in route:
        raise InvalidClient("--relays needs relay names, e.g. --relays esp,backup")
    for name in route:
        if not relay_config.NAME.fullmatch(name):
            raise InvalidClient(f"{name!r} is not a relay name (lower-case letters, digits and _)")
        if name not in configured:
            raise InvalidClient(f"no relay named {name} (relays: {', '.join(configured)})")
    return route


@dataclass(frozen=True)
class Client:
    """A client as `client list` shows it; `relays` None: every configured relay."""

    id: str
    name: str
    sender: str
    relays: list[str] | None
    timezone: str = "UTC"

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "sender": self.sender,
            "relays": self.relays,
            "timezone": self.timezone,
        }


async def update_client(
    conn: Conn,
    client_id: str,
    *,
    name: str | None = None,
    relays: list[str] | None = None,
    all_relays: bool = False,
    timezone: str | None = None,
) -> Client:
    """Rename a client, set its route (`relays`, checked with `check_route`, or every
    relay with `all_relays`) and its time zone, leaving what is not given as it is; the
    client as it now is.

    Raises InvalidClient for a bad name or time zone or both `relays` and `all_relays`,
    NotFound for no such client; either way nothing was written.
    """
    if relays is not None and all_relays:
        raise InvalidClient("give --relays or --all-relays, not both")
    row = await conn.fetchrow(
        """UPDATE clients
           SET name = coalesce($2, name),
               relays = CASE WHEN $4 THEN NULL ELSE coalesce($3, relays) END,
               timezone = coalesce($5, timezone)
           WHERE id = $1 RETURNING id, name, sender_email AS sender, relays, timezone""",
        client_id,
        None if name is None else _client_name(name),
        relays,
        all_relays,
        check_timezone(timezone),
    )
    if row is None:
        raise NotFound(f"no client {client_id!r}; add it with `client add`")
    return Client(**dict(row))


async def list_clients(conn: Conn) -> list[Client]:
    """Every client, by id."""
    rows = await conn.fetch(
        "SELECT id, name, sender_email AS sender, relays, timezone FROM clients ORDER BY id"
    )
    return [Client(**dict(r)) for r in rows]


def check_template(
    templates: TemplateStore, name: str, columns: list[str], client_name: str
) -> None:
    """Refuse a template that is missing, hides the unsubscribe link, or needs a column the
    file does not have, before anything is imported."""
    templates.check(name)
    sample = {column: "" for column in columns}
    sample.update(
        client_name=client_name,
        survey_url="https://survey.invalid/s?r=sample",
        unsubscribe_url="https://unsubscribe.invalid/unsubscribe/sample",
    )
    for locale in templates.locales(name):
        # The first message and a reminder (see `reminder` in docs/templates.md).
        for reminder in (0, 1):
            templates.render(name, [locale], {**sample, "reminder": reminder})


async def _batches(
    rows: Iterator[imports.Row | imports.Rejected], report: LaunchReport
) -> AsyncIterator[tuple[int, str, bytes, str | None, str | None, str]]:
    for item in rows:
        if isinstance(item, imports.Rejected):
            report.rejected.append(item)
        else:
            # COPY is binary and asyncpg has no binary jsonb encoder: stage as text.
            yield (
                item.line,
                item.email,
                item.email_hash,
                item.locale,
                item.timezone,
                orjson.dumps(item.vars).decode(),
            )


async def launch(
    conn: Conn,
    request: LaunchRequest,
    stream: BinaryIO,
    *,
    templates: TemplateStore,
    hash_key: bytes,
    progress: Callable[[int], object],
) -> LaunchReport:
    """Create a running campaign and import its recipients, all or nothing.

    The file is streamed into Postgres with COPY inside one transaction; addresses that
    appear twice are imported once and the later lines reported as duplicates. With an
    idempotency key already used by the client, the campaign it created is returned and
    the file is not read.
    """
    check_request(request)
    client = await conn.fetchrow(
        "SELECT name, timezone FROM clients WHERE id = $1", request.client_id
    )
    if client is None:
        raise LaunchProblem(f"unknown client {request.client_id!r}; add it with `client add`")
    period = field_period(request, schedule.zone(client["timezone"]), datetime.now(UTC))
    digest = None if request.idempotency_key is None else _digest(request, stream)
    existing = await _launched_before(conn, request)
    if existing is not None:
        assert digest is not None
        return _retried(request, existing, digest)
    columns, rows = imports.read_recipients(
        digest or stream,
        hash_key=hash_key,
        progress=progress,
        has_default_survey_url=request.survey_url is not None,
    )
    if request.survey_url is None and "survey_url" not in columns:
        raise LaunchProblem("give --survey-url, or a survey_url column in the file")
    try:
        check_template(templates, request.template, columns, client["name"])
    except TemplateProblem as e:
        raise LaunchProblem(str(e)) from e
    async with conn.transaction():
        report = await _create(conn, request, rows, digest, period)
    report.rejected.sort(key=lambda r: r.line)
    return report


async def _create(
    conn: Conn,
    request: LaunchRequest,
    rows: Iterator[imports.Row | imports.Rejected],
    digest: RequestDigest | None,
    period: FieldPeriod,
) -> LaunchReport:
    """Insert the campaign and its invitations, in the caller's transaction; raises
    NoValidRecipient when none could be imported. A concurrent launch with the same
    idempotency key that committed first gives its campaign instead."""
    report = LaunchReport()
    campaign_id = await ledger.create_campaign(
        conn,
        client_id=request.client_id,
        name=request.name,
        kind=request.kind,
        template=request.template,
        locale=request.locale,
        survey_url=request.survey_url or "",
        idempotency_key=request.idempotency_key,
        reminders=request.reminders,
        reminder_interval=request.reminder_interval,
        start_at=period.start_at,
        close_at=period.close_at,
        send_window=period.window,
        per_day=period.per_day,
    )
    if campaign_id is None:
        # A concurrent launch with the same key committed first (the insert waited for
        # it): its campaign is the answer.
        existing = await _launched_before(conn, request)
        assert existing is not None and digest is not None
        return _retried(request, existing, digest)
    report.campaign_id = campaign_id
    if period.start_at is not None and period.start_at > datetime.now(UTC):
        report.start_at = period.start_at
    report.imported, duplicates = await ledger.import_invitations(
        conn, campaign_id, _batches(rows, report)
    )
    report.rejected.extend(
        imports.Rejected(line, "duplicate address (imported once)") for line in duplicates
    )
    if report.imported == 0:
        report.rejected.sort(key=lambda r: r.line)
        raise NoValidRecipient(
            [(r.line, r.reason) for r in report.rejected[:3]], len(report.rejected) - 3
        )
    if digest is not None:
        await ledger.set_request_digest(conn, campaign_id, digest.finish())
    return report


def _digest(request: LaunchRequest, stream: BinaryIO) -> RequestDigest:
    """What the launch asks for: the file, and the options that change what is sent (not
    its name, which a retry from another copy of the file may change)."""
    options = {
        "kind": request.kind,
        "template": request.template,
        "locale": request.locale,
        "survey_url": request.survey_url,
        "reminders": request.reminders,
        "reminder_interval": None
        if request.reminder_interval is None
        else request.reminder_interval.total_seconds(),
    }
    # Only when given: launches before the field period existed keep their digests.
    period = {
        "start_at": request.start_at,
        "close_at": request.close_at,
        "window": request.window,
        "per_day": request.per_day,
    }
    options.update((k, v) for k, v in period.items() if v is not None)
    return RequestDigest(options, stream)


@dataclass(frozen=True)
class _Launched:
    """The campaign an earlier launch with the key created, and what it asked for."""

    report: LaunchReport
    digest: bytes | None


async def _launched_before(conn: Conn, request: LaunchRequest) -> _Launched | None:
    """The campaign an earlier launch with the client's same idempotency key created."""
    if request.idempotency_key is None:
        return None
    row = await conn.fetchrow(
        """SELECT c.id, c.request_digest,
                  (SELECT count(*) FROM invitations i WHERE i.campaign_id = c.id) AS n
           FROM campaigns c WHERE c.client_id = $1 AND c.idempotency_key = $2""",
        request.client_id,
        request.idempotency_key,
    )
    if row is None:
        return None
    report = LaunchReport(campaign_id=row["id"], imported=row["n"], existing=True)
    return _Launched(report, row["request_digest"])


def _retried(request: LaunchRequest, before: _Launched, digest: RequestDigest) -> LaunchReport:
    """The first campaign, for a launch that asks for what the first one asked for."""
    if before.digest is not None and before.digest != digest.finish():
        raise LaunchConflict(
            f"the idempotency key {request.idempotency_key!r} was first used for another "
            f"launch (campaign {before.report.campaign_id}: other recipients or options); "
            "a new campaign needs a new key"
        )
    return before.report


def open_recipients(path: Path) -> BinaryIO:
    """Open the recipients file, with a clear error instead of a traceback."""
    try:
        return path.open("rb")
    except OSError as e:
        raise LaunchProblem(f"cannot read {path}: {e.strerror}") from e


@dataclass(frozen=True)
class ScheduleReport:
    """A campaign's field period as `status` shows it, and when it sends next if it waits:
    its start while scheduled, the time its waiting slices run again while running."""

    status: CampaignStatus
    start_at: datetime | None = None
    close_at: datetime | None = None
    window: str | None = None
    per_day: int | None = None
    next_send_at: datetime | None = None

    @classmethod
    def of(cls, campaign: records.Campaign, now: datetime) -> ScheduleReport:
        return cls.at(
            campaign.status,
            now,
            start_at=campaign.start_at,
            close_at=campaign.close_at,
            window=campaign.send_window,
            per_day=campaign.per_day,
            waiting_until=campaign.waiting_until,
        )

    @classmethod
    def at(
        cls,
        status: CampaignStatus,
        now: datetime,
        *,
        start_at: datetime | None,
        close_at: datetime | None,
        window: str | None,
        per_day: int | None,
        waiting_until: datetime | None,
    ) -> ScheduleReport:
        """The report at `now` of a campaign in `status` whose slices wait (if they do)
        until `waiting_until`."""
        if status == "scheduled":
            next_send_at = start_at
        elif status == "running" and waiting_until is not None and waiting_until > now:
            next_send_at = waiting_until
        else:
            next_send_at = None
        return cls(status, start_at, close_at, window, per_day, next_send_at)

    def as_json(self) -> dict[str, object]:
        """`status --json`'s `schedule`: instants in ISO 8601 UTC, null when unset."""

        def iso(at: datetime | None) -> str | None:
            return None if at is None else at.astimezone(UTC).isoformat()

        return {
            "start_at": iso(self.start_at),
            "close_at": iso(self.close_at),
            "window": self.window,
            "per_day": self.per_day,
            "next_send_at": iso(self.next_send_at),
        }

    def waiting_line(self) -> str | None:
        """`scheduled for ...` or `waiting for the window; next send ...`; None when the
        campaign does not wait for its field period."""
        if self.next_send_at is None:
            return None
        when = schedule.utc_text(self.next_send_at)
        if self.status == "scheduled":
            return f"scheduled for {when}"
        if self.window is not None:
            return f"waiting for the window; next send {when}"
        return f"waiting for the next day (--per-day {self.per_day}); next send {when}"


@dataclass(frozen=True)
class StatusReport:
    """What `status` shows: the campaign's status and its invitations by state and reason."""

    campaign_id: int
    status: CampaignStatus
    counts: dict[str, int]
    reasons: dict[str, int]
    # Why it is paused (by the reputation guard) or failed; None otherwise.
    status_reason: str | None
    # Bounces and complaints that came back: hard, soft, policy, complaints.
    feedback: dict[str, int]
    # Each reminder round: when it is due and its invitations by state.
    reminders: list[records.Round]
    # Invitations the survey platform reported answered.
    completed: int = 0
    # The client's route (None: every relay), the state of each of its relays, and whether
    # the campaign waits for one of them (`relays.route_report` fills the last two).
    route: list[str] | None = None
    relays: list[dict[str, Any]] = field(default_factory=list)
    waiting_for_relay: bool = False
    # The field period (`launch --start-at --close-at --window --per-day`).
    schedule: ScheduleReport = field(default_factory=lambda: ScheduleReport("running"))
    # What `launch --allow-unaligned` overrode (`sending_domain.override_of`); None otherwise.
    domain_override: dict[str, Any] | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_json(self) -> dict[str, object]:
        """The `status --json` answer."""
        return {
            "campaign_id": self.campaign_id,
            "status": self.status,
            "total": self.total,
            "counts": self.counts,
            "reasons": self.reasons,
            "status_reason": self.status_reason,
            "feedback": self.feedback,
            "reminders": [r.as_json() for r in self.reminders],
            "completed": self.completed,
            "relays": self.relays,
            "waiting_for_relay": self.waiting_for_relay,
            "schedule": self.schedule.as_json(),
            "domain_override": self.domain_override,
        }


async def status_report(conn: Conn, campaign_id: int) -> StatusReport:
    """The campaign's status and counts; NotFound when there is no such campaign."""
    campaign = await ledger.load_campaign(conn, campaign_id)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    status = campaign.status
    counts = await ledger.counts(conn, campaign_id)
    if campaign.close_at is not None:
        counts.setdefault("expired", 0)
    return StatusReport(
        campaign_id,
        status,
        counts,
        await ledger.reason_counts(conn, campaign_id),
        await ledger.status_reason(conn, campaign_id),
        await feedback.counts(conn, campaign_id),
        await ledger.rounds(conn, campaign_id),
        await completion.completed_count(conn, campaign_id),
        campaign.relays,
        schedule=ScheduleReport.of(campaign, datetime.now(UTC)),
    )


async def with_relays(
    report: StatusReport, redis: Redis | None, relays: Sequence[relay_config.Relay]
) -> StatusReport:
    """The report with its route's relays and whether the campaign waits for one, read
    from `redis` (each relay "unknown" without one that answers)."""
    listed, waiting = await route_report(redis, relays, report.route, report.status)
    return replace(report, relays=listed, waiting_for_relay=waiting)


async def with_relays_at(
    report: StatusReport, redis_url: str, relays: Sequence[relay_config.Relay]
) -> StatusReport:
    """`with_relays`, connecting to the Redis at `redis_url` for it (a command's way)."""
    redis = None
    with contextlib.suppress(*queue.ERRORS):
        redis = await queue.connect(redis_url, retries=0)
    try:
        return await with_relays(report, redis, relays)
    finally:
        if redis is not None:
            await redis.aclose()


async def live_report(conn: Conn, redis: Redis | None, campaign_id: int) -> StatusReport:
    """`status_report` with each message counted when it is decided rather than when its
    chunk's outcomes are recorded (the ledger records a chunk of CHUNK_SIZE at once): the
    first invitations still `sending` whose send journal in `redis` says the server accepted
    them count as sent. Without Redis (None, or it does not answer) the ledger's counts.

    The journals are read before the ledger's snapshot (one repeatable-read transaction),
    so an accepted message is counted once, from the journal or from the ledger, and the
    counts never go back from one report to the next.
    """
    accepted: set[int] = set()
    if redis is not None:
        workers = await ledger.sending_workers(conn, campaign_id)
        with contextlib.suppress(*queue.ERRORS):
            accepted = await journal.accepted(redis, workers)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        report = await status_report(conn, campaign_id)
        in_flight = await ledger.count_sending(conn, campaign_id, list(accepted)) if accepted else 0
    if not in_flight:
        return report
    counts = {**report.counts, "sent": report.counts.get("sent", 0) + in_flight}
    counts["sending"] -= in_flight
    if not counts["sending"]:
        del counts["sending"]
    return replace(report, counts=counts)


async def list_campaigns(
    conn: Conn, *, client_id: str | None = None, status: CampaignStatus | None = None
) -> list[records.CampaignSummary]:
    """The campaigns, newest first, of `client_id` and in `status` when given. NotFound for
    a client that does not exist (a mistyped id is not a client without campaigns)."""
    if client_id is not None and not await conn.fetchval(
        "SELECT true FROM clients WHERE id = $1", client_id
    ):
        raise NotFound(f"unknown client {client_id!r}")
    return await ledger.list_campaigns(conn, client_id=client_id, status=status)


async def control(conn: Conn, campaign_id: int, action: Action) -> tuple[bool, CampaignStatus]:
    """Pause, resume or cancel a campaign (idempotent); whether it moved, and its status.

    Workers read the status before each chunk. A cancel commits the status on its own
    first, so workers let go of the rows they hold, which are then marked cancelled.
    """
    if await ledger.campaign_status(conn, campaign_id) is None:
        raise NotFound(f"no campaign {campaign_id}")
    allowed_from, to = MOVES[action]
    moved = await ledger.set_status(conn, campaign_id, to, allowed_from)
    if action == "cancel":
        await ledger.cancel_open(conn, campaign_id)
    status = await ledger.campaign_status(conn, campaign_id)
    assert status is not None
    return moved, status


async def resend_unknown(conn: Conn, campaign_id: int) -> int:
    """Put the campaign's `unknown` invitations back to pending and the campaign back to
    running if it had completed; how many. NotFound when there is no such campaign."""
    if await ledger.campaign_status(conn, campaign_id) is None:
        raise NotFound(f"no campaign {campaign_id}")
    async with conn.transaction():
        count = await ledger.reopen_unknown(conn, campaign_id)
        if count:
            await ledger.set_status(conn, campaign_id, "running", ("completed",))
    return count


# The reasons of `failed` invitations that `retry` puts back: the recipient refused nothing,
# the tries ran out (`retry_horizon`; `max_attempts` before RETRY_HORIZON) or the relay
# stopped them. Never a hard bounce, a refusal (`smtp_rejected`), an address or message no
# server can take, nor an opt-out (those are `suppressed`). The last five are
# `relay_check.REASONS`.
RetryReason = Literal[
    "retry_horizon",
    "max_attempts",
    "smtp_transient",
    "unreachable",
    "tls_failed",
    "auth_failed",
    "throttled",
    "refused",
]
RETRYABLE: tuple[RetryReason, ...] = get_args(RetryReason)


@dataclass(frozen=True)
class RetryReport:
    """What `retry` did: how many invitations it put back, per reason they had failed for,
    and the campaign's status after it."""

    campaign_id: int
    status: CampaignStatus
    by_reason: dict[str, int]

    @property
    def requeued(self) -> int:
        return sum(self.by_reason.values())

    def as_json(self) -> dict[str, object]:
        """The `retry --json` answer (and the API's)."""
        return {
            "campaign_id": self.campaign_id,
            "status": self.status,
            "requeued": self.requeued,
            "by_reason": self.by_reason,
        }


async def retry(conn: Conn, campaign_id: int, reasons: Sequence[str] = ()) -> RetryReport:
    """Put the campaign's invitations that failed for a transient reason (RETRYABLE, or
    only those of `reasons`) back to pending with fresh tries, and a completed or failed
    campaign back to running; the send-time checks run again when they are sent.

    A paused campaign stays paused (`resume` sends them). Raises NotFound when there is no
    such campaign, RetryRefused for a cancelled one or a reason not in RETRYABLE; then
    nothing changed.
    """
    for reason in reasons:
        if reason not in RETRYABLE:
            raise RetryRefused(
                f"{reason!r} is not a reason retry puts back (reasons: {', '.join(RETRYABLE)})"
            )
    status = await ledger.campaign_status(conn, campaign_id)
    if status is None:
        raise NotFound(f"no campaign {campaign_id}")
    async with conn.transaction():
        by_reason = await ledger.reopen_failed(conn, campaign_id, list(reasons or RETRYABLE))
        if by_reason is None:
            raise RetryRefused(f"campaign {campaign_id} was cancelled: nothing is sent again")
        if by_reason:
            await ledger.set_status(conn, campaign_id, "running", ("completed", "failed"))
    status = await ledger.campaign_status(conn, campaign_id)
    assert status is not None
    return RetryReport(campaign_id, status, by_reason)
