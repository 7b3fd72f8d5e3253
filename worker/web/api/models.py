"""The API's request and answer shapes (pydantic): they validate the input and are what
`/v1/openapi.json` is generated from."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from worker.campaigns import MAX_CAMPAIGN_NAME, MAX_REMINDERS, RETRYABLE, RetryReason
from worker.imports import MAX_COLUMNS
from worker.states import CampaignStatus

# `launch --idempotency-key`'s rule: 1-200 printable ASCII characters, no spaces.
IDEMPOTENCY_KEY = r"^[\x21-\x7e]{1,200}$"


class CampaignFields(BaseModel):
    """`launch`'s options, as JSON fields or multipart/form-data text fields."""

    model_config = ConfigDict(extra="forbid")

    template: str = Field(min_length=1, max_length=200, description="Template folder name.")
    kind: Literal["survey", "marketing"] = "survey"
    survey_url: str | None = Field(
        default=None,
        description="Base survey link; each recipient gets a distinct one (or give a "
        "survey_url column).",
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CAMPAIGN_NAME,
        description="Campaign name; default: the uploaded file's name (cut to "
        f"{MAX_CAMPAIGN_NAME} characters), `api` for JSON.",
    )
    locale: str = Field(
        default="en", pattern=r"^[a-zA-Z]{2}$", description="Locale for recipients without one."
    )
    reminders: int = Field(
        default=0,
        ge=0,
        le=MAX_REMINDERS,
        description="Reminder rounds to those who have not answered (survey campaigns).",
    )
    reminder_interval: str | None = Field(
        default=None,
        max_length=20,
        description="Time from the first message to round 1, and between rounds: 90s, 12h, 3d, 1w.",
    )
    start_at: str | None = Field(
        default=None,
        max_length=64,
        description="ISO 8601; without an offset, in the client's time zone. Until then the "
        "campaign is `scheduled`.",
    )
    close_at: str | None = Field(
        default=None,
        max_length=64,
        description="ISO 8601, after start_at: from then on nothing is sent and what was not "
        "sent ends `expired`.",
    )
    window: str | None = Field(
        default=None,
        max_length=1000,
        description="When messages may start, in each recipient's time zone: `DAYS "
        "HH:MM-HH:MM`, several joined by `;` (e.g. `Mon-Fri 09:00-12:00; Mon-Fri 14:00-17:00`).",
    )
    per_day: int | None = Field(
        default=None,
        description="At most this many messages (reminders included) a day in the client's "
        "time zone; 1 or more.",
    )
    allow_unaligned: bool = Field(
        default=False,
        description="Launch even when the client's sending domain fails DMARC through every "
        "relay of its route (otherwise 422); noted in the campaign's status.",
    )


class CampaignJson(CampaignFields):
    """`POST /v1/campaigns` as JSON: `launch`'s options and the recipients."""

    # At most MAX_COLUMNS fields each: declared here, checked by `recipients_csv` (which
    # names the recipient by its position, as the rejections do).
    recipients: list[
        Annotated[dict[str, str], Field(json_schema_extra={"maxProperties": MAX_COLUMNS})]
    ] = Field(
        min_length=1,
        description="One object per recipient: `email`, optional `locale`, any template "
        f"variables (the CSV's columns); at most {MAX_COLUMNS} fields each, and at most "
        f"{MAX_COLUMNS} distinct field names in all.",
    )


class RejectedLine(BaseModel):
    """A rejected line of an uploaded CSV."""

    model_config = ConfigDict(extra="forbid")

    line: int = Field(description="The file's line, as `launch` reports it.")
    reason: str


class RejectedRecipient(BaseModel):
    """A rejected recipient of a JSON launch."""

    model_config = ConfigDict(extra="forbid")

    recipient: int = Field(description="The recipient's 1-based position in `recipients`.")
    reason: str


class LaunchAnswer(BaseModel):
    """What `launch --json` prints, and whether the workers were told at once."""

    model_config = ConfigDict(extra="forbid")

    campaign_id: int
    imported: int
    rejected: list[RejectedLine] | list[RejectedRecipient] = Field(
        description="CSV upload: by line; JSON: by the recipient's position."
    )
    existing: bool = Field(description="True: an earlier request with the Idempotency-Key.")
    queued: bool = Field(
        description="False: Redis could not take the job; the reconcile cron starts it."
    )
    sending_domain: DomainVerdict | None = Field(
        default=None,
        description="The client's sending-domain check; absent when there was nothing to "
        "check (no relay of its route says how it authenticates mail).",
    )


class DomainVerdict(BaseModel):
    """The verdict of the client's sending-domain check and its reasons."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["ok", "warn", "fail"]
    reasons: list[str]


class DomainOverride(BaseModel):
    """A campaign launched with `allow_unaligned` over its client's `fail`."""

    model_config = ConfigDict(extra="forbid")

    domain: str
    policy: str | None
    fix: str | None
    at: str


class ReminderRound(BaseModel):
    """A reminder round: when it is due, and its invitations by state."""

    # Besides `sent` and `suppressed`, a count for each other state the round has.
    model_config = ConfigDict(
        extra="allow", json_schema_extra={"additionalProperties": {"type": "integer"}}
    )

    round: int = Field(ge=1)
    due_at: str | None = Field(
        description="UTC, ISO 8601; null until the campaign's first message was accepted."
    )
    sent: int
    suppressed: int


class RelayState(BaseModel):
    """One relay of the campaign's route, as the workers last saw it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    state: Literal["ok", "trouble", "unknown"] = Field(
        description="unknown: Redis, where the workers publish it, did not answer."
    )
    reason: str | None = Field(
        description="In trouble: unreachable, tls_failed, auth_failed, throttled or refused."
    )
    reply: str | None = Field(description="The relay's reply (code, status, text) or the error.")
    since: str | None = Field(description="ISO 8601: in this state since.")


class ScheduleAnswer(BaseModel):
    """The campaign's field period; instants in ISO 8601 UTC, null when unset."""

    model_config = ConfigDict(extra="forbid")

    start_at: str | None
    close_at: str | None
    window: str | None
    per_day: int | None
    next_send_at: str | None = Field(
        description="Scheduled: its start; waiting for its window or the next day: when it "
        "sends next; else null."
    )


class StatusAnswer(BaseModel):
    """What `status --json` prints."""

    model_config = ConfigDict(extra="forbid")

    campaign_id: int
    status: CampaignStatus
    total: int
    counts: dict[str, int]
    reasons: dict[str, int]
    status_reason: str | None
    feedback: dict[str, int]
    reminders: list[ReminderRound] = Field(description="One per round, in order.")
    completed: int = Field(description="Invitations the survey platform reported answered.")
    relays: list[RelayState] = Field(description="The relays of the client's route.")
    waiting_for_relay: bool = Field(
        description="Running, with every relay of its route in trouble: nothing leaves."
    )
    schedule: ScheduleAnswer
    domain_override: DomainOverride | None = Field(
        description="What the launch overrode with allow_unaligned (its client's sending "
        "domain failed the check); null for every other campaign."
    )


class ControlAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    campaign_id: int
    status: str
    changed: bool = Field(description="False: the campaign already was so, or could not move.")


class RetryRequest(BaseModel):
    """`POST /v1/campaigns/{id}/retry`'s optional body."""

    model_config = ConfigDict(extra="forbid")

    reasons: list[RetryReason] = Field(
        min_length=1,
        max_length=len(RETRYABLE),
        description="Put back only the invitations that failed for these reasons (without a "
        "body: for any of them).",
    )


class RetryAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    campaign_id: int
    status: str = Field(description="The campaign's status after the retry.")
    requeued: int = Field(description="How many invitations went back to pending.")
    by_reason: dict[str, int] = Field(description="How many of them per reason they failed for.")


class FeedEvent(BaseModel):
    kind: Literal["opt_out", "resubscribe", "erase"]
    email: str | None = Field(description="None for an erasure, or an address not held.")
    at: str = Field(description="UTC, ISO 8601.")


class FeedPage(BaseModel):
    """A page of the client's opt-out feed; no events: caught up (ask again later with
    the same cursor)."""

    events: list[FeedEvent]
    next_cursor: str


class ErrorAnswer(BaseModel):
    error: str
