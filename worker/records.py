"""The ledger's records as values: a campaign, a claimed invitation, an outcome to record,
an expired claim, a reminder round, a completed invitation, a campaign as listed. Frozen
dataclasses with no I/O, so that pure steps (composing, pacing, settling from the journal)
can take and return them without importing the SQL module that reads and writes them
(`ledger`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from worker.states import CampaignStatus, InvitationState, Kind


@dataclass(frozen=True)
class Campaign:
    """A campaign with what sending needs to know about its client."""

    id: int
    client_id: str
    client_token_id: int
    client_name: str
    sender_email: str
    name: str
    kind: Kind
    template: str
    locale: str
    survey_url: str
    status: CampaignStatus
    # The client's route: the relays its mail may leave through (None: every relay).
    relays: list[str] | None = None
    # The field period: the client's time zone (recipients' by default, and the calendar
    # of `per_day`), the send window's spec, the daily cap, the start and the close.
    timezone: str = "UTC"
    send_window: str | None = None
    per_day: int | None = None
    start_at: datetime | None = None
    close_at: datetime | None = None
    # When a slice waiting for the window or the day's quota runs again.
    waiting_until: datetime | None = None


@dataclass(frozen=True)
class Invitation:
    """One claimed invitation, as the send step sees it."""

    id: int
    email: str | None
    email_hash: bytes
    locale: str | None
    vars: dict[str, Any]
    attempts: int
    # 0 for the first message; r for reminder round r, which follows up `parent_id`.
    round: int = 0
    parent_id: int | None = None
    # When the first attempt that reached a relay was made (None: not yet): retries stop
    # RETRY_HORIZON after it.
    first_attempt_at: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    """What happened to one invitation, to be recorded."""

    invitation_id: int
    state: InvitationState
    reason: str | None = None
    smtp_code: int | None = None
    message_id: str | None = None
    next_attempt_at: datetime | None = None
    # False for a message given back before any of it was sent: its attempt is not counted.
    started: bool = True
    # For the log line only (not recorded): the relay it went to, the reply's enhanced
    # status code and text (addresses redacted), or the error when no reply came.
    relay: str | None = None
    smtp_status: str | None = None
    smtp_reply: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Expired:
    """An invitation left `sending` by a worker whose lease ran out."""

    id: int
    campaign_id: int
    client_id: str
    email_hash: bytes
    sender_email: str
    round: int = 0  # a reminder's round (0: the first message)


@dataclass(frozen=True)
class Completed:
    """An invitation completed now (its first completion)."""

    invitation_id: int
    campaign_id: int
    client_id: str
    email_hash: bytes


@dataclass(frozen=True)
class Round:
    """A reminder round of a campaign: when it is due, and its invitations by state."""

    round: int
    due_at: datetime | None  # None until the campaign's first message was accepted
    counts: dict[str, int]

    def as_json(self) -> dict[str, object]:
        """As `status --json` shows it: round, due_at, then a count per state."""
        return {
            "round": self.round,
            "due_at": None if self.due_at is None else self.due_at.isoformat(),
            **{state: self.counts.get(state, 0) for state in ("sent", "suppressed")},
            **{s: n for s, n in self.counts.items() if s not in ("sent", "suppressed")},
        }


@dataclass(frozen=True)
class CampaignSummary:
    """A campaign as `campaigns` lists it: what it is, where it stands, its first
    invitations by state, and when it was created and ended (None while it has not)."""

    id: int
    client_id: str
    name: str
    kind: Kind
    status: CampaignStatus
    counts: dict[str, int]
    created_at: datetime
    finished_at: datetime | None

    def as_json(self) -> dict[str, object]:
        """As `campaigns --json` shows it (dates in ISO 8601)."""
        return {
            "id": self.id,
            "client_id": self.client_id,
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "total": sum(self.counts.values()),
            "counts": self.counts,
            "created_at": self.created_at.isoformat(),
            "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
        }
