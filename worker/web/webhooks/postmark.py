"""Postmark's webhooks: HTTP basic authentication and the record each request carries.

Postmark signs nothing: a webhook URL is protected by the HTTP basic credentials given
with it (RFC 7617), which arrive in the Authorization header. Postmark's own `MessageID`
is its id, not our Message-ID, and it rewrites the envelope sender, so a record is
matched by its custom metadata instead: our messages carry
`X-PM-Metadata-message-id: <our Message-ID>`, which Postmark returns as
`"Metadata": {"message-id": "..."}` in every record about the message.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from typing import Any

from worker.errors import Malformed
from worker.feedback import Event, FeedbackKind
from worker.web.webhooks.core import (
    Batch,
    BatchBuilder,
    bounce_kind,
    load_json,
    mapping,
    our_message_id,
    provider_ids,
    status_in,
    text,
)

# The metadata key (X-PM-Metadata-<key> when sending) that carries our Message-ID.
METADATA_KEY = "message-id"
# Postmark's bounce `Type`s by what they say of the address. Unlisted types (auto-replies,
# unsubscribe and subscribe requests, challenge-response, manual deactivation, ...) say
# nothing of whether the address works, and are ignored.
_BOUNCE_TYPES: dict[str, FeedbackKind] = {
    "HardBounce": "hard",
    "BadEmailAddress": "hard",
    "Transient": "soft",
    "SoftBounce": "soft",
    "DnsError": "soft",
    # Refused for the sender's or the content's reasons, not the address's.
    "Blocked": "policy",
    "DMARCPolicy": "policy",
    "SpamNotification": "policy",
    "SpamComplaint": "complaint",
}


def authorized(header: str | None, *, user: bytes, password: bytes) -> bool:
    """Whether an Authorization header holds these basic credentials (RFC 7617), compared
    in constant time."""
    scheme, _, encoded = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        return False
    given_user, colon, given_password = decoded.partition(b":")
    user_ok = hmac.compare_digest(given_user, user)
    password_ok = hmac.compare_digest(given_password, password)
    return bool(colon) and user_ok and password_ok


def events(body: bytes) -> Batch:
    """The feedback in a Postmark webhook record (one JSON object).

    RecordType Bounce by its Type (`_BOUNCE_TYPES`: HardBounce and BadEmailAddress hard;
    Transient, SoftBounce and DnsError soft; Blocked, DMARCPolicy and SpamNotification
    policy), SpamComplaint: complaint, Delivery: delivered; others are ignored. Named by
    `Metadata["message-id"]` (the key in any case).
    """
    data = mapping(load_json(body), "the body")
    builder = BatchBuilder()
    record = text(data.get("RecordType"))
    if record is None:
        raise Malformed("RecordType is missing")
    builder.ids += provider_ids(
        [record, data.get("ID"), data.get("MessageID"), data.get("Recipient")]
    )
    builder.ids += provider_ids([data.get("DeliveredAt"), data.get("BouncedAt")])
    kind: FeedbackKind | None = None
    status = None
    if record == "Bounce":
        kind = _BOUNCE_TYPES.get(str(data.get("Type")))
        status = status_in(data.get("Details"))
        if kind in ("hard", "soft"):
            kind = bounce_kind(status, permanent=kind == "hard")
        if kind == "complaint":
            status = None
    elif record == "SpamComplaint":
        kind = "complaint"
    elif record == "Delivery":
        kind = "delivered"
    if kind is None:
        builder.ignored += 1
        return builder.build()
    message_id = _message_id(data.get("Metadata"))
    builder.add(
        None
        if message_id is None
        else Event(kind=kind, source="postmark", status=status, message_id=message_id)
    )
    return builder.build()


def _message_id(metadata: Any) -> str | None:
    if not isinstance(metadata, Mapping):
        return None
    for key, value in metadata.items():
        if isinstance(key, str) and key.lower() == METADATA_KEY:
            return our_message_id(text(value))
    return None
