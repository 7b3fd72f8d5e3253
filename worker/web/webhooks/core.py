"""What every provider's webhook shares: the batch a request comes to, and
what counts as naming a message of ours.

Pure functions over data: no I/O, no clock (the callers pass `now`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from worker.dsn import specific_status
from worker.errors import Malformed
from worker.feedback import Event, FeedbackKind

# Signed timestamps (SendGrid, Mailgun) further than this from our clock are refused.
REPLAY_WINDOW_SECONDS = 300
# The Message-ID of an invitation (worker/message.py: `invitation-<id>@<client domain>`).
_OUR_MESSAGE_ID = re.compile(r"invitation-[1-9][0-9]{0,18}@[A-Za-z0-9.-]{1,253}")
# RFC 3463 section 2: class.subject.detail, class 2, 4 or 5.
_STATUS = re.compile(r"(?<![0-9.])([245]\.[0-9]{1,3}\.[0-9]{1,3})(?![0-9.])")
_STATUS_ONLY = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
# The envelope sender of our messages when BOUNCE_DOMAIN is set: `b-<token>@BOUNCE_DOMAIN`.
_VERP_LOCAL = re.compile(r"b-[A-Za-z0-9]{1,64}")


@dataclass(frozen=True)
class Batch:
    """The feedback one webhook request carries.

    `events` name messages of ours; `skipped` counts events of a handled type that named
    none (no usable Message-ID or VERP address); `ignored` counts events of other types;
    `duplicates` counts events repeated within the request. `ids` are the provider's own
    ids of the request's events, from which the job id is derived.
    """

    events: tuple[Event, ...] = ()
    skipped: int = 0
    ignored: int = 0
    duplicates: int = 0
    ids: tuple[str, ...] = ()

    def job_id(self, provider: str) -> str:
        """The `record_feedback` job id of this request: the same for every delivery of the
        same provider events, so a provider's retry is a no-op while the job is queued."""
        digest = hashlib.sha256("\n".join(sorted(set(self.ids))).encode()).hexdigest()
        return f"record_feedback:{provider}:{digest[:32]}"

    def report(self) -> dict[str, Any]:
        """The job's argument: `{"events": [Event.as_job(), ...]}`."""
        return {"events": [e.as_job() for e in self.events]}

    def counts(self) -> dict[str, int]:
        """What the response and the log line say of the request."""
        return {
            "accepted": len(self.events),
            "skipped": self.skipped,
            "ignored": self.ignored,
            "duplicates": self.duplicates,
        }


class BatchBuilder:
    """Collects a request's events, dropping repeats of the same event."""

    def __init__(self) -> None:
        self._events: dict[Event, None] = {}
        self.skipped = 0
        self.ignored = 0
        self.duplicates = 0
        self.ids: list[str] = []

    def add(self, event: Event | None) -> None:
        """Add an event, or count a handled one that named no message of ours (None)."""
        if event is None:
            self.skipped += 1
        elif event in self._events:
            self.duplicates += 1
        else:
            self._events[event] = None

    def build(self) -> Batch:
        return Batch(
            events=tuple(self._events),
            skipped=self.skipped,
            ignored=self.ignored,
            duplicates=self.duplicates,
            ids=tuple(self.ids),
        )


def load_json(body: bytes) -> object:
    """The JSON value of a request body; Malformed if it is not JSON."""
    try:
        value: object = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Malformed("the body is not JSON") from None
    return value


def mapping(value: object, what: str) -> Mapping[str, Any]:
    """`value` if it is a JSON object, else Malformed naming `what`."""
    if not isinstance(value, dict):
        raise Malformed(f"{what} is not a JSON object")
    return value


def text(value: object) -> str | None:
    """`value` if it is a non-empty string, else None."""
    return value if isinstance(value, str) and value else None


def our_message_id(value: object) -> str | None:
    """The Message-ID (without angle brackets) if `value` is one of our invitations'."""
    if not isinstance(value, str):
        return None
    candidate = value.strip().removeprefix("<").removesuffix(">").strip()
    return candidate if _OUR_MESSAGE_ID.fullmatch(candidate) else None


def our_verp(value: object, bounce_domain: str | None) -> str | None:
    """The VERP address if `value` is an envelope sender of ours (`b-<token>@BOUNCE_DOMAIN`);
    its token is checked by the `record_feedback` job, which holds the keys."""
    if bounce_domain is None or not isinstance(value, str):
        return None
    local, at, domain = value.strip().removeprefix("<").removesuffix(">").rpartition("@")
    if not at or domain.lower() != bounce_domain or not _VERP_LOCAL.fullmatch(local):
        return None
    return f"{local}@{domain.lower()}"


def status_in(*texts: object) -> str | None:
    """The first RFC 3463 status (e.g. "5.1.1") found in `texts`, exactly or within words
    (a diagnostic such as "smtp; 550 5.1.1 user unknown"); an X.0.0 defers to a later one
    of the same class (`dsn.specific_status`: SendGrid's `status: 5.0.0` beside a `reason`
    that says 5.7.1)."""
    return specific_status(_statuses(texts))


def _statuses(texts: Iterable[object]) -> Iterator[str]:
    for value in texts:
        if not isinstance(value, str):
            continue
        if _STATUS_ONLY.fullmatch(value.strip()):
            yield value.strip()
        else:
            yield from (m.group(1) for m in _STATUS.finditer(value[:4096]))


def bounce_kind(status: str | None, *, permanent: bool) -> FeedbackKind:
    """A bounce's kind: a 5.7.x status is the sender's problem (policy, RFC 3463 section
    3.8: security or policy status), never the address's; else a bounce the provider
    calls permanent is hard, any other soft."""
    if status is not None and status.startswith("5.7."):
        return "policy"
    return "hard" if permanent else "soft"


def provider_ids(values: Iterable[object]) -> list[str]:
    """The non-empty string (or integer) ids among `values`, as strings."""
    ids = []
    for value in values:
        if isinstance(value, bool):
            continue
        if isinstance(value, str | int) and str(value):
            ids.append(str(value))
    return ids
