"""What comes back after a message left: bounces, complaints and deliveries, and their effects.

An `Event` is one piece of feedback about one message we sent, from any source: a DSN or
ARF report received by `survey-worker inbound` (matched by its VERP address), a provider's
webhook (matched by Message-ID or VERP address), or a synchronous 5xx at send time. The
`record_feedback` job turns events into effects (`apply`), each at most once per
invitation and kind however often the same report arrives.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from worker import dsn, ledger, message, optouts, verp
from worker.db import Conn, row_count
from worker.settings import Settings
from worker.states import Kind
from worker.suppression import Scope

# hard: the address cannot receive mail; soft: not now (4.x.x, delayed); policy: refused
# for the sender's reasons (5.7.x), never the recipient's fault; complaint: marked as spam;
# delivered: a provider saw the mailbox accept a message.
FeedbackKind = Literal["hard", "soft", "policy", "complaint", "delivered"]
FEEDBACK_KINDS: tuple[FeedbackKind, ...] = get_args(FeedbackKind)
Source = Literal["verp", "smtp", "ses", "sendgrid", "mailgun", "postmark"]
SOURCES: tuple[Source, ...] = get_args(Source)

# Longest Message-ID / VERP address / status accepted from a report (RFC 5322 lines are
# at most 998 octets; anything longer is not ours).
_MAX_FIELD = 998


@dataclass(frozen=True)
class Event:
    """One piece of feedback about one message we sent.

    At least one of `verp` (the message's envelope sender, `b-<token>@BOUNCE_DOMAIN`),
    `message_id` (its Message-ID, without angle brackets) or `invitation_id` names it.
    `status` is the RFC 3463 status when the report gave one, e.g. "5.1.1".
    """

    kind: FeedbackKind
    source: Source
    status: str | None = None
    message_id: str | None = None
    verp: str | None = None
    invitation_id: int | None = None

    def as_job(self) -> dict[str, Any]:
        """The event as the JSON object a `record_feedback` job carries."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_job(cls, data: object) -> Event | None:
        """The event a job carries, or None when it is not a well-formed event."""
        if not isinstance(data, dict) or set(data) - set(cls.__dataclass_fields__):
            return None
        kind, source = data.get("kind"), data.get("source")
        if kind not in FEEDBACK_KINDS or source not in SOURCES:
            return None
        texts = {k: data.get(k) for k in ("status", "message_id", "verp")}
        if any(
            v is not None and not (isinstance(v, str) and 0 < len(v) <= _MAX_FIELD)
            for v in texts.values()
        ):
            return None
        invitation_id = data.get("invitation_id")
        if invitation_id is not None and not (
            type(invitation_id) is int and 0 < invitation_id < 2**63
        ):
            return None
        if invitation_id is None and texts["message_id"] is None and texts["verp"] is None:
            return None
        return cls(kind=kind, source=source, invitation_id=invitation_id, **texts)


@dataclass(frozen=True)
class Policy:
    """The feedback settings: when soft bounces list an address, when a campaign pauses."""

    soft_bounce_limit: int = 3
    soft_bounce_window_days: int = 30
    pause_min_sent: int = 1000
    pause_bounce_rate: float = 0.05
    pause_complaint_rate: float = 0.001

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """SOFT_BOUNCE_LIMIT, SOFT_BOUNCE_WINDOW_DAYS and the PAUSE_* settings."""
        return cls(
            soft_bounce_limit=settings.soft_bounce_limit,
            soft_bounce_window_days=settings.soft_bounce_window_days,
            pause_min_sent=settings.pause_min_sent,
            pause_bounce_rate=settings.pause_bounce_rate,
            pause_complaint_rate=settings.pause_complaint_rate,
        )


@dataclass(frozen=True)
class Target:
    """The invitation an event is about, with what its effects need."""

    invitation_id: int
    campaign_id: int
    client_id: str
    kind: Kind
    email_hash: bytes
    email: str | None


@dataclass(frozen=True)
class Pause:
    """A campaign the reputation guard paused: why, at which rate, after how many sends."""

    reason: Literal["bounce_rate", "complaint_rate"]
    rate: float
    sent: int


@dataclass(frozen=True)
class Effect:
    """What recording one event did."""

    recorded: bool  # False: this invitation had feedback of this kind already
    listed: bool = False  # the address joined the global bounce list just now
    opted_out: bool = False  # a complaint put it on the campaign's opt-out list just now
    paused: Pause | None = None


@dataclass(frozen=True)
class Report:
    """The events a `record_feedback` report carries, and why a message carried none."""

    events: list[Event]
    ignored: str | None = None  # an auto-reply, say: nothing to record


def decode_report(report: object) -> Report | None:
    """The events of a `record_feedback` report (see docs/bounces.md), or None when it is
    malformed: `{"events": [...]}` from a webhook, or `{"verp": ADDRESS, "message":
    BASE64}`, a message received at a VERP address, classified by `dsn.classify`."""
    if not isinstance(report, dict):
        return None
    if set(report) == {"events"} and isinstance(report["events"], list):
        events = [Event.from_job(e) for e in report["events"]]
        return None if None in events else Report([e for e in events if e is not None])
    if set(report) != {"verp", "message"}:
        return None
    address, encoded = report["verp"], report["message"]
    if not isinstance(address, str) or not isinstance(encoded, str):
        return None
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        return None
    verdict = dsn.classify(raw)
    if verdict.kind == "ignore":
        return Report([], ignored=verdict.reason)
    event = Event(
        kind=verdict.kind,
        source="verp",
        status=verdict.status,
        verp=address,
        message_id=verdict.original_message_id,
    )
    return Report([event])


async def find(
    conn: Conn, event: Event, *, keys: Sequence[bytes], bounce_domain: str | None
) -> Target | None:
    """The invitation `event` names, or None when it names none of ours.

    A VERP address at the bounce domain decides (its token is signed): a forged one names
    nothing, whatever else the report says. Otherwise a Message-ID must also carry the
    sending domain of the invitation's client. Nothing else in a report is ever trusted
    to name the recipient.
    """
    invitation_id = event.invitation_id
    if invitation_id is None and event.verp is not None and bounce_domain is not None:
        invitation_id = verp.invitation_of(keys, event.verp, bounce_domain)
        if invitation_id is None and verp.at_domain(event.verp, bounce_domain):
            return None
    domain = None
    if invitation_id is None and event.message_id is not None:
        named = message.invitation_of_message_id(event.message_id)
        if named is not None:
            invitation_id, domain = named
    if invitation_id is None:
        return None
    row = await conn.fetchrow(
        """SELECT i.id, i.campaign_id, c.client_id, c.kind, i.email_hash, i.email,
                  cl.sender_email
           FROM invitations i
           JOIN campaigns c ON c.id = i.campaign_id
           JOIN clients cl ON cl.id = c.client_id
           WHERE i.id = $1""",
        invitation_id,
    )
    if row is None:
        return None
    if domain is not None and row["sender_email"].rpartition("@")[2].lower() != domain:
        return None
    return Target(
        invitation_id=row["id"],
        campaign_id=row["campaign_id"],
        client_id=row["client_id"],
        kind=row["kind"],
        email_hash=row["email_hash"],
        email=row["email"],
    )


async def apply(conn: Conn, target: Target, event: Event, policy: Policy) -> Effect:
    """Record `event` about `target` and carry out its effects, once per invitation and kind.

    hard: the address joins the global bounce list. soft: it does once SOFT_BOUNCE_LIMIT
    soft bounces came within SOFT_BOUNCE_WINDOW_DAYS with no delivery reported since.
    complaint: the campaign's opt-out list (source `complaint`, audited) and the global list.
    policy and delivered change no list. Then a hard bounce or a complaint may pause the
    campaign (`guard`).
    """
    async with conn.transaction():
        # One address's events one at a time, so concurrent soft bounces all get counted.
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1)",
            int.from_bytes(target.email_hash[:8], "big", signed=True),
        )
        recorded = await conn.fetchval(
            """INSERT INTO feedback (invitation_id, campaign_id, email_hash, kind, status, source)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (invitation_id, kind) DO NOTHING RETURNING true""",
            target.invitation_id,
            target.campaign_id,
            target.email_hash,
            event.kind,
            event.status[:32] if event.status else None,
            event.source,
        )
        if not recorded:
            return Effect(recorded=False)
        listed = opted_out = False
        if event.kind == "hard":
            listed = await _list(conn, target.email_hash, "hard")
        elif event.kind == "soft":
            if await _soft_bounces(conn, target.email_hash, policy) >= policy.soft_bounce_limit:
                listed = await _list(conn, target.email_hash, "soft")
        elif event.kind == "complaint":
            opted_out = await optouts.add(
                conn,
                Scope(target.kind, target.client_id),
                email_hash=target.email_hash,
                email=target.email,
                source="complaint",
                actor="feedback",
            )
            listed = await _list(conn, target.email_hash, "complaint")
    paused = None
    if event.kind in ("hard", "complaint"):
        paused = await guard(conn, target.campaign_id, policy)
    return Effect(recorded=True, listed=listed, opted_out=opted_out, paused=paused)


async def _list(conn: Conn, email_hash: bytes, kind: str) -> bool:
    """Put the address on the global bounce list; True if it was not there yet."""
    added = await conn.fetchval(
        """INSERT INTO bounces (email_hash, kind) VALUES ($1, $2)
           ON CONFLICT DO NOTHING RETURNING true""",
        email_hash,
        kind,
    )
    return bool(added)


async def _soft_bounces(conn: Conn, email_hash: bytes, policy: Policy) -> int:
    """Soft bounces of the address in the window, since the last delivery reported."""
    count: int = await conn.fetchval(
        """SELECT count(*) FROM feedback
           WHERE email_hash = $1 AND kind = 'soft'
             AND created_at > now() - make_interval(days => $2)
             AND created_at >= COALESCE(
                 (SELECT max(created_at) FROM feedback
                  WHERE email_hash = $1 AND kind = 'delivered'), '-infinity')""",
        email_hash,
        policy.soft_bounce_window_days,
    )
    return count


def pause_reason(
    policy: Policy, *, sent: int, refused: int, hard: int, complaints: int
) -> Pause | None:
    """Whether a campaign's feedback so far should pause it, and why.

    `sent` is its accepted sends, `refused` its synchronous hard bounces (a 5xx at send
    time, counted among `hard` too). Nothing pauses before PAUSE_MIN_SENT accepted sends;
    then a hard-bounce rate (hard bounces over messages tried) of PAUSE_BOUNCE_RATE or a
    complaint rate (complaints over accepted sends) of PAUSE_COMPLAINT_RATE does.
    """
    if sent < policy.pause_min_sent:
        return None
    bounce_rate = hard / (sent + refused)
    if bounce_rate >= policy.pause_bounce_rate:
        return Pause("bounce_rate", round(bounce_rate, 6), sent)
    complaint_rate = complaints / sent
    if complaint_rate >= policy.pause_complaint_rate:
        return Pause("complaint_rate", round(complaint_rate, 6), sent)
    return None


async def guard(conn: Conn, campaign_id: int, policy: Policy) -> Pause | None:
    """Pause a running campaign whose feedback crossed a threshold (`pause_reason`); the
    pause, if this call made it. Workers read the status before each chunk."""
    if await ledger.campaign_status(conn, campaign_id) != "running":
        return None
    row = await conn.fetchrow(
        """SELECT
               (SELECT count(*) FROM invitations WHERE campaign_id = $1 AND state = 'sent')
                   AS sent,
               count(*) FILTER (WHERE kind = 'hard' AND source = 'smtp') AS refused,
               count(*) FILTER (WHERE kind = 'hard') AS hard,
               count(*) FILTER (WHERE kind = 'complaint') AS complaints
           FROM feedback WHERE campaign_id = $1""",
        campaign_id,
    )
    assert row is not None
    pause = pause_reason(
        policy,
        sent=row["sent"],
        refused=row["refused"],
        hard=row["hard"],
        complaints=row["complaints"],
    )
    if pause is None:
        return None
    moved = await ledger.set_status(conn, campaign_id, "paused", ("running",), reason=pause.reason)
    return pause if moved else None


async def counts(conn: Conn, campaign_id: int) -> dict[str, int]:
    """The campaign's feedback by kind, as `status --json` shows it."""
    rows = await conn.fetch(
        "SELECT kind, count(*) AS n FROM feedback WHERE campaign_id = $1 GROUP BY kind",
        campaign_id,
    )
    found = {r["kind"]: r["n"] for r in rows}
    return {
        "hard": found.get("hard", 0),
        "soft": found.get("soft", 0),
        "policy": found.get("policy", 0),
        "complaints": found.get("complaint", 0),
    }


async def purge(conn: Conn, days: int) -> int:
    """Delete the feedback rows older than `days` (retention); how many went."""
    result = await conn.execute(
        "DELETE FROM feedback WHERE created_at < now() - make_interval(days => $1)", days
    )
    return row_count(result)
