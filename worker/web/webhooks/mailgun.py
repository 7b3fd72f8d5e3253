"""Mailgun's webhooks: the signature in the body and the event it signs.

A Mailgun webhook body is `{"signature": {"timestamp", "token", "signature"},
"event-data": {...}}`; `signature` is the hex HMAC-SHA256 of timestamp + token under the
webhook signing key. A token must never be accepted twice (the caller remembers them).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.errors import Malformed, Unauthenticated
from worker.feedback import Event, FeedbackKind
from worker.web.webhooks.core import (
    REPLAY_WINDOW_SECONDS,
    Batch,
    BatchBuilder,
    bounce_kind,
    load_json,
    mapping,
    our_message_id,
    status_in,
    text,
)

# How long a token is remembered: longer than the window in which its timestamp passes.
TOKEN_MEMORY_SECONDS = 3 * REPLAY_WINDOW_SECONDS


@dataclass(frozen=True)
class Signed:
    """A Mailgun webhook request: its signature fields and its event."""

    timestamp: str
    token: str
    signature: str
    event: Mapping[str, Any]

    def token_key(self) -> str:
        """The Redis key that remembers this token (a digest: the key need not show it)."""
        return "webhooks:mailgun:token:" + hashlib.sha256(self.token.encode()).hexdigest()[:40]


def parse(body: bytes) -> Signed:
    """The signature and event of a request body; Malformed if it is not one."""
    data = mapping(load_json(body), "the body")
    signature = mapping(data.get("signature"), "signature")
    timestamp = signature.get("timestamp")
    if isinstance(timestamp, int) and not isinstance(timestamp, bool):
        timestamp = str(timestamp)
    token, digest = text(signature.get("token")), text(signature.get("signature"))
    if not isinstance(timestamp, str) or token is None or digest is None:
        raise Malformed("signature lacks timestamp, token or signature")
    return Signed(
        timestamp=timestamp,
        token=token,
        signature=digest,
        event=mapping(data.get("event-data"), "event-data"),
    )


def verify(key: bytes, signed: Signed, *, now: float) -> None:
    """Return if `key` signed the request and its timestamp is within five minutes of
    `now`; else Unauthenticated. (Whether the token came before is the caller's check.)"""
    signed_text = (signed.timestamp + signed.token).encode("utf-8", "surrogatepass")
    expected = hmac.new(key, signed_text, hashlib.sha256).hexdigest().encode()
    given = signed.signature.lower().encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(expected, given):
        raise Unauthenticated("bad signature")
    timestamp = signed.timestamp
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise Unauthenticated("bad timestamp")
    if abs(now - int(timestamp)) > REPLAY_WINDOW_SECONDS:
        raise Unauthenticated("stale timestamp")


def events(signed: Signed) -> Batch:
    """The feedback in a Mailgun event.

    failed: by `severity`, permanent is hard (policy for a 5.7.x status in
    `delivery-status`, a complaint for Mailgun's `suppress-complaint`, ignored for
    `suppress-unsubscribe`), temporary soft; complained: complaint; delivered. Others are
    ignored. Named by `message.headers.message-id`.
    """
    data = signed.event
    builder = BatchBuilder()
    builder.ids.append(text(data.get("id")) or signed.token)
    kind_status = _kind(data)
    if kind_status is None:
        builder.ignored += 1
        return builder.build()
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    message_id = our_message_id(headers.get("message-id")) if isinstance(headers, dict) else None
    kind, status = kind_status
    builder.add(
        None
        if message_id is None
        else Event(kind=kind, source="mailgun", status=status, message_id=message_id)
    )
    return builder.build()


def _kind(data: Mapping[str, Any]) -> tuple[FeedbackKind, str | None] | None:
    event = data.get("event")
    if event == "delivered":
        return "delivered", None
    if event == "complained":
        return "complaint", None
    if event != "failed":
        return None
    delivery = data.get("delivery-status")
    delivery = delivery if isinstance(delivery, dict) else {}
    status = status_in(
        delivery.get("enhanced-code"), delivery.get("message"), delivery.get("description")
    )
    severity, reason = data.get("severity"), data.get("reason")
    if severity == "permanent":
        if reason == "suppress-unsubscribe":
            return None
        if reason == "suppress-complaint":
            return "complaint", None
        return bounce_kind(status, permanent=True), status
    if severity == "temporary":
        return bounce_kind(status, permanent=False), status
    code = delivery.get("code")
    if isinstance(code, int) and 400 <= code < 600:
        return bounce_kind(status, permanent=code >= 500), status
    return None
