"""Twilio SendGrid's Event Webhook: its ECDSA signature and its events.

A signed Event Webhook request carries `X-Twilio-Email-Event-Webhook-Signature`, a base64
DER ECDSA signature (P-256, SHA-256) over `X-Twilio-Email-Event-Webhook-Timestamp`
followed by the raw body, made with a key whose public half SendGrid shows as base64 DER.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from worker.errors import Malformed, Unauthenticated
from worker.feedback import Event, FeedbackKind
from worker.web.webhooks.core import (
    REPLAY_WINDOW_SECONDS,
    Batch,
    BatchBuilder,
    bounce_kind,
    load_json,
    our_message_id,
    status_in,
    text,
)

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
# `dropped` reasons that mean SendGrid holds the address as bounced (its bounce and
# invalid-address lists); other drops (unsubscribed, spam content, ...) are ignored.
_BOUNCE_DROPS = frozenset({"Bounced Address", "Invalid"})


def load_public_key(value: str) -> ec.EllipticCurvePublicKey:
    """SENDGRID_WEBHOOK_PUBLIC_KEY: base64 DER (as SendGrid shows it) or PEM; ValueError if
    it is not a P-256 public key."""
    value = value.strip()
    try:
        if value.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(value.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(value, validate=True))
    except (ValueError, binascii.Error, UnsupportedAlgorithm):
        raise ValueError("not a public key in base64 DER or PEM") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("not an ECDSA P-256 public key")
    return key


def verify(
    key: ec.EllipticCurvePublicKey,
    *,
    signature: str | None,
    timestamp: str | None,
    body: bytes,
    now: float,
) -> None:
    """Return if `key` signed `timestamp` + `body` and the timestamp is within five minutes
    of `now`; else Unauthenticated."""
    if not signature or not timestamp:
        raise Unauthenticated("no signature")
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise Unauthenticated("bad timestamp")
    if abs(now - int(timestamp)) > REPLAY_WINDOW_SECONDS:
        raise Unauthenticated("stale timestamp")
    try:
        der = base64.b64decode(signature, validate=True)
        key.verify(der, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        raise Unauthenticated("bad signature") from None


def events(body: bytes) -> Batch:
    """The feedback in a batch of SendGrid events (a JSON array of objects).

    bounce: hard, or policy for a 5.7.x status; blocked (a bounce of type `blocked`,
    the receiving server refusing the sender): policy, or soft for a 4.x.x status;
    dropped because SendGrid lists the address as bounced or invalid: hard; deferred:
    soft; delivered; spamreport: complaint. Others are ignored. An event is named by its
    `smtp-id` (our Message-ID); one whose `sg_event_id` came before in the batch is a
    duplicate.
    """
    data = load_json(body)
    if not isinstance(data, list):
        raise Malformed("the body is not a JSON array")
    builder = BatchBuilder()
    seen: set[str] = set()
    for item in data:
        if not isinstance(item, dict):
            raise Malformed("an event is not a JSON object")
        event_id = text(item.get("sg_event_id"))
        if event_id is not None:
            if event_id in seen:
                builder.duplicates += 1
                continue
            seen.add(event_id)
            builder.ids.append(event_id)
        kind_status = _kind(item)
        if kind_status is None:
            builder.ignored += 1
            continue
        kind, status = kind_status
        message_id = our_message_id(item.get("smtp-id"))
        builder.add(
            None
            if message_id is None
            else Event(kind=kind, source="sendgrid", status=status, message_id=message_id)
        )
    if not builder.ids:
        # No event ids at all: the body itself names the request.
        builder.ids.append(hashlib.sha256(body).hexdigest())
    return builder.build()


def _kind(item: dict[str, Any]) -> tuple[FeedbackKind, str | None] | None:
    event = item.get("event")
    status = status_in(item.get("status"), item.get("reason"), item.get("response"))
    if event == "bounce":
        if item.get("type") == "blocked":
            return ("soft" if status and status.startswith("4.") else "policy"), status
        return bounce_kind(status, permanent=True), status
    if event == "dropped":
        return ("hard", None) if item.get("reason") in _BOUNCE_DROPS else None
    if event == "deferred":
        return "soft", status
    if event == "delivered":
        return "delivered", None
    if event == "spamreport":
        return "complaint", None
    return None
