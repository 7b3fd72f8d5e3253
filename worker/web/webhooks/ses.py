"""Amazon SES through an Amazon SNS HTTP(S) subscription: the SNS envelope, its signature,
and the SES notification it carries.

SNS signs each message (SignatureVersion 1: SHA1withRSA, 2: SHA256withRSA, PKCS#1 v1.5)
over a canonical string of some of its fields, with the key of an X.509 certificate it
serves at `SigningCertURL`. Fetching that certificate is the caller's job; everything here
is pure.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from worker.errors import Malformed, Unauthenticated
from worker.feedback import Event, FeedbackKind
from worker.web.webhooks.core import (
    Batch,
    BatchBuilder,
    bounce_kind,
    load_json,
    mapping,
    our_message_id,
    our_verp,
    status_in,
    text,
)

MessageType = Literal["Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"]
_TYPES: tuple[MessageType, ...] = (
    "Notification",
    "SubscriptionConfirmation",
    "UnsubscribeConfirmation",
)
# The fields each message type signs, in the order SNS puts them in the string to sign
# (byte order of their names); Subject only when present.
_SIGNED_FIELDS: dict[str, tuple[str, ...]] = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SIGNED_FIELDS["UnsubscribeConfirmation"] = _SIGNED_FIELDS["SubscriptionConfirmation"]
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
# A signing certificate is a few kilobytes; anything much larger is not one.
MAX_CERTIFICATE_BYTES = 65536


@dataclass(frozen=True)
class SnsMessage:
    """An Amazon SNS message as POSTed to an HTTP(S) subscription."""

    type: MessageType
    message_id: str
    topic_arn: str
    signature_version: str
    signature: bytes
    signing_cert_url: str
    fields: Mapping[str, str]

    @property
    def subscribe_url(self) -> str | None:
        return self.fields.get("SubscribeURL")

    @property
    def message(self) -> str:
        return self.fields["Message"]


def parse(body: bytes) -> SnsMessage:
    """The SNS message in a request body; Malformed if it is not one (an unknown
    SignatureVersion or a signature that is not base64 is Unauthenticated)."""
    data = mapping(load_json(body), "the body")
    kind = data.get("Type")
    if kind not in _TYPES:
        raise Malformed("Type is not an SNS message type")
    fields: dict[str, str] = {}
    for name in _SIGNED_FIELDS[kind]:
        value = data.get(name)
        if name == "Subject" and value is None:
            continue
        if not isinstance(value, str):
            raise Malformed(f"{name} is missing")
        fields[name] = value
    version = data.get("SignatureVersion")
    if version not in _HASHES:
        raise Unauthenticated("unsupported SignatureVersion")
    cert_url, signature = text(data.get("SigningCertURL")), text(data.get("Signature"))
    if cert_url is None or signature is None:
        raise Unauthenticated("no signature")
    try:
        raw_signature = base64.b64decode(signature, validate=True)
    except binascii.Error:
        raise Unauthenticated("bad signature") from None
    return SnsMessage(
        type=kind,
        message_id=fields["MessageId"],
        topic_arn=fields["TopicArn"],
        signature_version=version,
        signature=raw_signature,
        signing_cert_url=cert_url,
        fields=fields,
    )


def string_to_sign(message: SnsMessage) -> bytes:
    """The canonical string SNS signs: each signed field's name and value, each on a line
    of its own, in `_SIGNED_FIELDS` order."""
    lines = []
    for name in _SIGNED_FIELDS[message.type]:
        if name in message.fields:
            lines += [name, message.fields[name]]
    return ("\n".join(lines) + "\n").encode()


# Whitespace and control characters: URL parsers disagree about them (urlsplit drops a tab
# that httpx refuses, and httpx keeps a leading space as part of a relative path), so a URL
# holding one is refused before any parser reads it.
_NOT_IN_URL = re.compile(r"[\x00-\x20\x7f-\x9f\s]")


def sns_url(url: str, host_pattern: re.Pattern[str], *, field: str) -> httpx.URL:
    """`url` (the message's `field`, a SigningCertURL or SubscribeURL) exactly as httpx
    will fetch it, once SNS can have sent it: https, on a host SNS_CERT_HOST_PATTERN
    matches as a whole, with no user or password, no whitespace or control character.
    Unauthenticated, naming `field` and the reason, otherwise."""
    if _NOT_IN_URL.search(url):
        raise Unauthenticated(f"{field}: not a URL")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise Unauthenticated(f"{field}: not a URL") from None
    if parsed.scheme != "https":
        raise Unauthenticated(f"{field}: not https")
    if not parsed.host or parsed.userinfo or not host_pattern.fullmatch(parsed.host):
        raise Unauthenticated(f"{field}: not an SNS host")
    return parsed


def load_certificate(data: bytes) -> x509.Certificate:
    """A signing certificate (PEM, or DER) with an RSA key; Unauthenticated if it is none."""
    try:
        try:
            certificate = x509.load_pem_x509_certificate(data)
        except ValueError:
            certificate = x509.load_der_x509_certificate(data)
    except ValueError:
        raise Unauthenticated("the signing certificate is not a certificate") from None
    if not isinstance(certificate.public_key(), rsa.RSAPublicKey):
        raise Unauthenticated("the signing certificate has no RSA key")
    return certificate


def public_key(certificate: x509.Certificate, *, now: datetime) -> rsa.RSAPublicKey:
    """The RSA key of a signing certificate valid at `now`; Unauthenticated if it is not."""
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise Unauthenticated("the signing certificate is not valid now")
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise Unauthenticated("the signing certificate has no RSA key")
    return key


def verify(message: SnsMessage, key: rsa.RSAPublicKey) -> None:
    """Return if `key` signed `message`; else Unauthenticated."""
    algorithm = _HASHES[message.signature_version]()
    try:
        key.verify(message.signature, string_to_sign(message), padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        raise Unauthenticated("bad signature") from None


def events(message: SnsMessage, *, bounce_domain: str | None) -> Batch:
    """The feedback an SNS Notification's SES event carries.

    SES notifications (`notificationType`) and SES event publishing (`eventType`) alike:
    Bounce (Permanent: hard, or policy for a recipient whose status is 5.7.x; Transient
    and Undetermined: soft), Complaint (complaint; an ARF `not-spam` report is ignored)
    and Delivery (delivered); other types are ignored. The message is named by its
    Message-ID (`mail.commonHeaders.messageId`, else the Message-ID of `mail.headers`) and
    its envelope sender (`mail.source`, when a VERP address of ours).
    """
    ses = mapping(load_json(message.message.encode()), "the SES event")
    builder = BatchBuilder()
    builder.ids.append(message.message_id)
    kind = ses.get("notificationType", ses.get("eventType"))
    if kind not in ("Bounce", "Complaint", "Delivery"):
        builder.ignored += 1
        return builder.build()
    mail = mapping(ses.get("mail"), "mail")
    message_id, verp = _message_id(mail), our_verp(mail.get("source"), bounce_domain)

    def event(kind: FeedbackKind, status: str | None = None) -> Event | None:
        if message_id is None and verp is None:
            return None
        return Event(kind=kind, source="ses", status=status, message_id=message_id, verp=verp)

    if kind == "Delivery":
        builder.add(event("delivered"))
    elif kind == "Complaint":
        complaint = mapping(ses.get("complaint"), "complaint")
        if complaint.get("complaintFeedbackType") == "not-spam":
            builder.ignored += 1
        else:
            builder.add(event("complaint"))
    else:
        bounce = mapping(ses.get("bounce"), "bounce")
        permanent = bounce.get("bounceType") == "Permanent"
        recipients = bounce.get("bouncedRecipients")
        if not isinstance(recipients, list) or not recipients:
            recipients = [{}]
        for recipient in recipients:
            details = recipient if isinstance(recipient, dict) else {}
            status = status_in(details.get("status"), details.get("diagnosticCode"))
            builder.add(event(bounce_kind(status, permanent=permanent), status))
    return builder.build()


def _message_id(mail: Mapping[str, Any]) -> str | None:
    common = mail.get("commonHeaders")
    if isinstance(common, dict):
        found = our_message_id(common.get("messageId"))
        if found:
            return found
    headers = mail.get("headers")
    for header in headers if isinstance(headers, list) else []:
        if isinstance(header, dict) and str(header.get("name", "")).lower() == "message-id":
            return our_message_id(header.get("value"))
    return None
