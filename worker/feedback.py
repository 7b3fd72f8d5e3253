"""What comes back after a message left: bounces, complaints and deliveries, and their effects.

An `Event` is one piece of feedback about one message we sent, from any source: a DSN or
ARF report received by `survey-worker inbound` (matched by its VERP address), a provider's
webhook (matched by Message-ID or VERP address), or a synchronous 5xx at send time. The
`record_feedback` job turns events into effects (`apply`), each at most once per
invitation and kind however often the same report arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

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
