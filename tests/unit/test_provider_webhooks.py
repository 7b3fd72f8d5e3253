"""The provider webhooks' pure core: signatures (SNS, SendGrid, Mailgun, Postmark's basic
credentials), the mapping of each provider's events to feedback, and malformed bodies
(any bytes, any JSON: a Batch or a refusal, never another exception)."""

from __future__ import annotations

import base64
import contextlib
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from tests.support.webhooks import (
    BOUNCE_DOMAIN,
    MAILGUN_KEY,
    MESSAGE_ID,
    SnsSigner,
    mailgun_body,
    mailgun_event,
    postmark_record,
    sendgrid_event,
    sendgrid_headers,
    sendgrid_key,
    ses_event,
    sns_confirmation,
    sns_notification,
)
from worker.errors import Malformed, Refused, Unauthenticated
from worker.feedback import Event
from worker.settings import SNS_CERT_HOSTS
from worker.web.webhooks import mailgun, postmark, sendgrid, ses
from worker.web.webhooks.core import (
    Batch,
    our_message_id,
    our_verp,
    status_in,
)

SIGNER = SnsSigner.create()
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem"
SNS_KEY = SIGNER.key.public_key()
SENDGRID_PRIVATE, SENDGRID_PUBLIC = sendgrid_key()
SENDGRID_KEY = sendgrid.load_public_key(SENDGRID_PUBLIC)
VERP = f"b-{'a' * 36}@{BOUNCE_DOMAIN}"
NOW = time.time()

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)


def json_values(keys: list[str]) -> st.SearchStrategy[Any]:
    """Any JSON value, its objects' keys mostly the provider's own field names."""
    names = st.sampled_from(keys) | st.text(max_size=8)
    return st.recursive(
        json_scalars | st.sampled_from(["Bounce", "Permanent", "5.1.1", f"<{MESSAGE_ID}>"]),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(names, children, max_size=6)
        ),
        max_leaves=25,
    )


def ours(kind: str, source: str, **fields: Any) -> Event:
    return Event(kind=kind, source=source, message_id=MESSAGE_ID, **fields)  # type: ignore[arg-type]


# --- Shared -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (MESSAGE_ID, MESSAGE_ID),
        (f" <{MESSAGE_ID}> ", MESSAGE_ID),
        ("invitation-0@acme.example", None),
        ("invitation-x@acme.example", None),
        ("0102018c@email.amazonses.com", None),
        ("<a@b> invitation-1@c.example", None),
        (None, None),
        (42, None),
    ],
)
def test_our_message_ids(value: object, expected: str | None) -> None:
    assert our_message_id(value) == expected


def test_verp_addresses_are_ours_only_at_the_bounce_domain() -> None:
    assert our_verp(VERP, BOUNCE_DOMAIN) == VERP
    assert our_verp(f"<{VERP.upper().replace('B-', 'b-')}>", BOUNCE_DOMAIN) is not None
    assert our_verp(VERP, None) is None
    assert our_verp(f"b-{'a' * 36}@elsewhere.example", BOUNCE_DOMAIN) is None
    assert our_verp(f"surveys@{BOUNCE_DOMAIN}", BOUNCE_DOMAIN) is None


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (("5.1.1",), "5.1.1"),
        ((None, "smtp; 550 5.7.1 policy"), "5.7.1"),
        (("550 #5.1.0 Address rejected",), "5.1.0"),
        (("version 10.5.1.2",), None),
        (("no status here",), None),
        ((550,), None),
        # 5.0.0 ("other undefined status") defers to a later status of its class.
        (("5.0.0", "550 5.7.1 blocked using zen.spamhaus.org"), "5.7.1"),
        (("5.0.0", "550 5.1.1 user unknown"), "5.1.1"),
        (("5.0.0", None, "smtp; 550 5.0.0 refused 5.7.26"), "5.7.26"),
        (("5.0.0", "450 4.7.1 later"), "5.0.0"),
        (("5.0.0", "blocked by list"), "5.0.0"),
        (("5.1.1", "550 5.7.1 blocked"), "5.1.1"),
    ],
)
def test_status_in_finds_rfc_3463_statuses(texts: tuple[object, ...], expected: str | None) -> None:
    assert status_in(*texts) == expected


def test_job_ids_depend_only_on_the_providers_ids() -> None:
    one = Batch(ids=("a", "b")).job_id("sendgrid")
    assert one == Batch(ids=("b", "a", "a")).job_id("sendgrid")
    assert one != Batch(ids=("a",)).job_id("sendgrid")
    assert one != Batch(ids=("a", "b")).job_id("mailgun")
    assert one.startswith("record_feedback:sendgrid:") and len(one) == 57


# --- SNS / SES --------------------------------------------------------------------------


def sns_body(message: dict[str, str]) -> bytes:
    return orjson.dumps(message)


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("subject", ["Amazon SES Email Event Notification", None])
def test_sns_notifications_signed_by_the_certificate_verify(
    version: str, subject: str | None
) -> None:
    notification = sns_notification(ses_event("Bounce"), cert_url=CERT_URL, subject=subject)
    message = ses.parse(sns_body(SIGNER.sign(notification, version=version)))
    ses.verify(message, SNS_KEY)
    assert message.topic_arn == notification["TopicArn"]


def test_sns_subscription_confirmations_verify() -> None:
    confirmation = sns_confirmation(
        cert_url=CERT_URL, subscribe_url="https://sns.eu-west-1.amazonaws.com/?Action=Confirm"
    )
    message = ses.parse(sns_body(SIGNER.sign(confirmation)))
    ses.verify(message, SNS_KEY)
    assert message.subscribe_url == confirmation["SubscribeURL"]


@given(st.data())
def test_changing_any_signed_field_fails_verification(data: st.DataObject) -> None:
    signed = SIGNER.sign(sns_notification(ses_event("Delivery"), cert_url=CERT_URL))
    name = data.draw(st.sampled_from(["Message", "MessageId", "Subject", "Timestamp", "TopicArn"]))
    value = signed[name]
    position = data.draw(st.integers(min_value=0, max_value=len(value) - 1))
    replacement = data.draw(st.characters(codec="utf-8").filter(lambda c: c != value[position]))
    tampered = {**signed, name: value[:position] + replacement + value[position + 1 :]}
    with pytest.raises(Unauthenticated):
        ses.verify(ses.parse(sns_body(tampered)), SNS_KEY)


def test_a_signature_by_another_key_or_version_fails() -> None:
    signed = SIGNER.sign(sns_notification(ses_event("Delivery"), cert_url=CERT_URL))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    with pytest.raises(Unauthenticated):
        ses.verify(ses.parse(sns_body(signed)), other)
    with pytest.raises(Unauthenticated):
        ses.verify(ses.parse(sns_body({**signed, "SignatureVersion": "1"})), SNS_KEY)
    with pytest.raises(Unauthenticated):
        ses.parse(sns_body({**signed, "SignatureVersion": "3"}))


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (CERT_URL, None),
        ("https://sns.cn-north-1.amazonaws.com.cn/cert.pem", None),
        ("https://SNS.us-east-1.amazonaws.com/cert.pem", None),
        ("http://sns.eu-west-1.amazonaws.com/cert.pem", "not https"),
        ("https://sns.eu-west-1.amazonaws.com.evil.example/cert.pem", "not an SNS host"),
        ("https://evil.example/sns.eu-west-1.amazonaws.com/cert.pem", "not an SNS host"),
        ("https://user@sns.eu-west-1.amazonaws.com/cert.pem", "not an SNS host"),
        ("https://sns.eu-west-1.amazonaws.com\\@evil.example/cert.pem", "not an SNS host"),
        ("https://s3.amazonaws.com/cert.pem", "not an SNS host"),
        ("https://sns.eu-west-1.amazonaws.com:x/cert.pem", "not a URL"),
        ("https://[::1/cert.pem", "not a URL"),
        # Parsers disagree about whitespace and control characters: none is fetched.
        ("https://sns.eu-west-1.amazon\taws.com/cert.pem", "not a URL"),
        ("https://sns.eu-west-1.amazonaws.com/cert\t.pem", "not a URL"),
        ("https://sns.eu-west-1.amazonaws.com\n.evil.example/cert.pem", "not a URL"),
        (" https://sns.eu-west-1.amazonaws.com/cert.pem", "not a URL"),
        ("https://sns.eu-west-1.amazonaws.com/cert.pem\x00", "not a URL"),
        ("https://sns.eu-west-1.amazonaws.com/ce\u2028rt.pem", "not a URL"),
        ("", "not https"),
    ],
)
def test_certificate_and_subscribe_urls_must_be_https_on_an_sns_host(
    url: str, problem: str | None
) -> None:
    if problem is None:
        checked = ses.sns_url(url, re.compile(SNS_CERT_HOSTS), field="SigningCertURL")
        # What is fetched is what was checked.
        assert checked == httpx.URL(url)
        assert re.fullmatch(SNS_CERT_HOSTS, checked.host)
    else:
        with pytest.raises(Unauthenticated) as refused:
            ses.sns_url(url, re.compile(SNS_CERT_HOSTS), field="SigningCertURL")
        assert str(refused.value) == f"SigningCertURL: {problem}"


def test_certificates_are_checked_for_validity_and_kind() -> None:
    certificate = ses.load_certificate(SIGNER.certificate_pem)
    assert isinstance(ses.public_key(certificate, now=datetime.now(UTC)), rsa.RSAPublicKey)
    with pytest.raises(Unauthenticated):
        ses.public_key(certificate, now=datetime.now(UTC) + timedelta(days=365))
    der = ses.load_certificate(certificate.public_bytes(serialization.Encoding.DER))
    assert der.serial_number == certificate.serial_number
    with pytest.raises(Unauthenticated):
        ses.load_certificate(b"-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----")


def ses_batch(event: dict[str, Any], *, bounce_domain: str | None = BOUNCE_DOMAIN) -> Batch:
    notification = SIGNER.sign(sns_notification(event, cert_url=CERT_URL))
    return ses.events(ses.parse(sns_body(notification)), bounce_domain=bounce_domain)


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (ses_event("Bounce", status="5.1.1"), ours("hard", "ses", status="5.1.1")),
        (ses_event("Bounce", status="5.7.26"), ours("policy", "ses", status="5.7.26")),
        (ses_event("Bounce", status=None), ours("hard", "ses")),
        (
            ses_event("Bounce", bounce_type="Transient", status="4.4.7"),
            ours("soft", "ses", status="4.4.7"),
        ),
        (ses_event("Bounce", bounce_type="Undetermined", status=None), ours("soft", "ses")),
        (ses_event("Complaint"), ours("complaint", "ses")),
        (ses_event("Delivery"), ours("delivered", "ses")),
        (ses_event("Delivery", source=VERP), ours("delivered", "ses", verp=VERP)),
        (
            ses_event("Bounce", message_id=None, source=VERP, status="5.1.1"),
            Event(kind="hard", source="ses", status="5.1.1", verp=VERP),
        ),
    ],
)
def test_ses_events_map_to_feedback(event: dict[str, Any], expected: Event) -> None:
    batch = ses_batch(event)
    assert batch.events == (expected,)
    assert (batch.skipped, batch.ignored) == (0, 0)


def test_ses_event_publishing_format_is_read_too() -> None:
    event = ses_event("Bounce")
    event["eventType"] = event.pop("notificationType")
    assert ses_batch(event).events == (ours("hard", "ses", status="5.1.1"),)


def test_ses_events_naming_no_message_of_ours_are_skipped() -> None:
    assert ses_batch(ses_event("Bounce", message_id=None)).skipped == 1
    assert (
        ses_batch(ses_event("Delivery", message_id=None, source=VERP), bounce_domain=None).skipped
        == 1
    )
    headers_only = ses_event("Delivery")
    del headers_only["mail"]["commonHeaders"]["messageId"]
    assert ses_batch(headers_only).events == (ours("delivered", "ses"),)


def test_other_ses_events_and_not_spam_reports_are_ignored() -> None:
    assert ses_batch(ses_event("Complaint", feedback_type="not-spam")).ignored == 1
    assert ses_batch({"notificationType": "Received", "mail": {}}).ignored == 1
    assert ses_batch({"eventType": "Click"}).ignored == 1


@given(st.binary(max_size=300))
def test_any_bytes_are_an_sns_message_or_refused(body: bytes) -> None:
    with contextlib.suppress(Refused):
        ses.parse(body)


SNS_FIELDS = [
    "Type",
    "Message",
    "MessageId",
    "Subject",
    "Timestamp",
    "TopicArn",
    "Token",
    "SubscribeURL",
    "Signature",
    "SignatureVersion",
    "SigningCertURL",
]


@given(json_values(SNS_FIELDS))
def test_any_json_is_an_sns_message_or_refused(value: Any) -> None:
    with contextlib.suppress(Refused):
        ses.parse(orjson.dumps(value))


SES_FIELDS = [
    "notificationType",
    "eventType",
    "mail",
    "bounce",
    "complaint",
    "commonHeaders",
    "headers",
    "messageId",
    "source",
    "bounceType",
    "bouncedRecipients",
    "status",
    "diagnosticCode",
    "complaintFeedbackType",
    "name",
    "value",
]


@given(json_values(SES_FIELDS))
def test_any_ses_event_is_a_batch_or_malformed(value: Any) -> None:
    message = ses.parse(
        sns_body(
            {
                **sns_notification({}, cert_url=CERT_URL),
                "Message": orjson.dumps(value).decode(),
                "Signature": "AAAA",
                "SignatureVersion": "2",
            }
        )
    )
    try:
        batch = ses.events(message, bounce_domain=BOUNCE_DOMAIN)
    except Malformed:
        return
    assert all(Event.from_job(e.as_job()) == e for e in batch.events)


# --- SendGrid -----------------------------------------------------------------------------


def test_the_sendgrid_key_is_read_as_base64_der_or_pem() -> None:
    pem = SENDGRID_KEY.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    assert sendgrid.load_public_key(pem).public_numbers() == SENDGRID_KEY.public_numbers()
    assert sendgrid.load_public_key(f"  {SENDGRID_PUBLIC}\n").public_numbers() == (
        SENDGRID_KEY.public_numbers()
    )
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    for wrong in (p384, rsa_key):
        der = wrong.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with pytest.raises(ValueError, match="P-256"):
            sendgrid.load_public_key(base64.b64encode(der).decode())
    for garbage in ("", "not base64!", base64.b64encode(b"not a key").decode(), "-----BEGIN x"):
        with pytest.raises(ValueError):
            sendgrid.load_public_key(garbage)


def sendgrid_verify(body: bytes, headers: dict[str, str], *, now: float = NOW) -> None:
    sendgrid.verify(
        SENDGRID_KEY,
        signature=headers.get(sendgrid.SIGNATURE_HEADER),
        timestamp=headers.get(sendgrid.TIMESTAMP_HEADER),
        body=body,
        now=now,
    )


def test_a_sendgrid_signature_over_timestamp_and_body_verifies() -> None:
    body = orjson.dumps([sendgrid_event("delivered")])
    sendgrid_verify(body, sendgrid_headers(SENDGRID_PRIVATE, body, timestamp=int(NOW)))


@given(st.data())
def test_changing_any_byte_of_a_sendgrid_body_fails(data: st.DataObject) -> None:
    body = orjson.dumps([sendgrid_event("delivered")])
    headers = sendgrid_headers(SENDGRID_PRIVATE, body, timestamp=int(NOW))
    raw = bytearray(body)
    raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    with pytest.raises(Unauthenticated):
        sendgrid_verify(bytes(raw), headers)


@pytest.mark.parametrize("skew", [-301, 301, 10**9])
def test_a_sendgrid_timestamp_off_by_over_five_minutes_fails(skew: int) -> None:
    body = b"[]"
    headers = sendgrid_headers(SENDGRID_PRIVATE, body, timestamp=int(NOW) + skew)
    with pytest.raises(Unauthenticated, match="stale"):
        sendgrid_verify(body, headers)


@given(signature=st.text(max_size=120), timestamp=st.text(max_size=20))
def test_any_sendgrid_headers_verify_or_are_refused(signature: str, timestamp: str) -> None:
    with pytest.raises(Unauthenticated):
        sendgrid_verify(
            b"[]", {sendgrid.SIGNATURE_HEADER: signature, sendgrid.TIMESTAMP_HEADER: timestamp}
        )


def test_sendgrid_events_map_to_feedback() -> None:
    repeated = sendgrid_event("open")
    batch = sendgrid.events(
        orjson.dumps(
            [
                sendgrid_event("bounce", type="bounce", status="5.1.1"),
                sendgrid_event("bounce", status="5.7.1"),
                sendgrid_event("bounce", type="blocked", status="5.7.1"),
                sendgrid_event("bounce", type="blocked", status="4.7.1"),
                sendgrid_event("bounce", type="blocked", reason="unable to get mx info"),
                sendgrid_event("dropped", reason="Bounced Address"),
                sendgrid_event("dropped", reason="Invalid"),
                sendgrid_event("dropped", reason="Spam Reporting Address"),
                sendgrid_event("deferred", response="450 4.2.1 slow down"),
                sendgrid_event("delivered"),
                sendgrid_event("spamreport"),
                sendgrid_event("processed"),
                repeated,
                repeated,
                sendgrid_event("delivered", **{"smtp-id": None}),
            ]
        )
    )
    assert batch.events == (
        ours("hard", "sendgrid", status="5.1.1"),
        ours("policy", "sendgrid", status="5.7.1"),
        ours("soft", "sendgrid", status="4.7.1"),
        ours("policy", "sendgrid"),
        ours("hard", "sendgrid"),
        ours("soft", "sendgrid", status="4.2.1"),
        ours("delivered", "sendgrid"),
        ours("complaint", "sendgrid"),
    )
    # Two policy 5.7.1 events (bounce and blocked) are one; the repeated open is a duplicate.
    assert (batch.skipped, batch.ignored, batch.duplicates) == (1, 3, 3)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # SendGrid relays Spamhaus's refusal as status 5.0.0: a policy block, not a bad address.
        (
            {"status": "5.0.0", "reason": "550 5.7.1 Service unavailable; blocked using Spamhaus"},
            ours("policy", "sendgrid", status="5.7.1"),
        ),
        (
            {"status": "5.0.0", "reason": "550 5.1.1 The email account does not exist"},
            ours("hard", "sendgrid", status="5.1.1"),
        ),
        ({"status": "5.0.0", "reason": "550 rejected"}, ours("hard", "sendgrid", status="5.0.0")),
    ],
)
def test_a_sendgrid_unspecified_status_defers_to_the_reason(
    fields: dict[str, str], expected: Event
) -> None:
    batch = sendgrid.events(orjson.dumps([sendgrid_event("bounce", type="bounce", **fields)]))
    assert batch.events == (expected,)


SENDGRID_FIELDS = ["event", "type", "status", "reason", "response", "smtp-id", "sg_event_id"]


@given(json_values(SENDGRID_FIELDS))
def test_any_sendgrid_json_is_a_batch_or_malformed(value: Any) -> None:
    try:
        batch = sendgrid.events(orjson.dumps(value))
    except Malformed:
        return
    assert batch.job_id("sendgrid").startswith("record_feedback:sendgrid:")


@given(st.binary(max_size=200))
def test_any_sendgrid_bytes_are_a_batch_or_malformed(body: bytes) -> None:
    with contextlib.suppress(Malformed):
        sendgrid.events(body)


# --- Mailgun ------------------------------------------------------------------------------

MAILGUN = MAILGUN_KEY.encode()


def test_a_mailgun_signature_verifies() -> None:
    mailgun.verify(
        MAILGUN,
        mailgun.parse(mailgun_body(mailgun_event("delivered"), timestamp=int(NOW))),
        now=NOW,
    )


@given(st.data())
def test_changing_any_signed_mailgun_field_fails(data: st.DataObject) -> None:
    signed = mailgun.parse(mailgun_body(mailgun_event("delivered"), timestamp=int(NOW)))
    name = data.draw(st.sampled_from(["timestamp", "token", "signature"]))
    value = getattr(signed, name)
    position = data.draw(st.integers(0, len(value) - 1))
    replacement = data.draw(st.characters().filter(lambda c: c.lower() != value[position]))
    changed = value[:position] + replacement + value[position + 1 :]
    tampered = mailgun.Signed(**{**signed.__dict__, name: changed})
    with pytest.raises(Unauthenticated):
        mailgun.verify(MAILGUN, tampered, now=NOW)


def test_a_stale_mailgun_timestamp_or_another_key_fails() -> None:
    old = mailgun.parse(mailgun_body(mailgun_event("delivered"), timestamp=int(NOW) - 301))
    with pytest.raises(Unauthenticated, match="stale"):
        mailgun.verify(MAILGUN, old, now=NOW)
    with pytest.raises(Unauthenticated, match="signature"):
        mailgun.verify(
            b"other",
            mailgun.parse(mailgun_body(mailgun_event("delivered"), timestamp=int(NOW))),
            now=NOW,
        )


def test_mailgun_token_keys_do_not_show_the_token() -> None:
    signed = mailgun.parse(mailgun_body(mailgun_event("delivered"), token="t" * 50))
    assert "t" * 10 not in signed.token_key()
    assert signed.token_key().startswith("webhooks:mailgun:token:")


def mailgun_batch(event: dict[str, Any]) -> Batch:
    return mailgun.events(mailgun.parse(mailgun_body(event)))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"severity": "permanent", "delivery-status": {"code": 550, "enhanced-code": "5.1.1"}},
            ours("hard", "mailgun", status="5.1.1"),
        ),
        (
            {"severity": "permanent", "delivery-status": {"message": "5.7.1 blocked"}},
            ours("policy", "mailgun", status="5.7.1"),
        ),
        ({"severity": "temporary"}, ours("soft", "mailgun")),
        ({"severity": "permanent", "reason": "suppress-bounce"}, ours("hard", "mailgun")),
        ({"severity": "permanent", "reason": "suppress-complaint"}, ours("complaint", "mailgun")),
        ({"delivery-status": {"code": 421}}, ours("soft", "mailgun")),
        ({"delivery-status": {"code": 554}}, ours("hard", "mailgun")),
    ],
)
def test_mailgun_failures_map_by_severity_and_delivery_status(
    fields: dict[str, Any], expected: Event
) -> None:
    assert mailgun_batch(mailgun_event("failed", **fields)).events == (expected,)


def test_other_mailgun_events() -> None:
    assert mailgun_batch(mailgun_event("complained")).events == (ours("complaint", "mailgun"),)
    assert mailgun_batch(mailgun_event("delivered")).events == (ours("delivered", "mailgun"),)
    unsubscribed = mailgun_event("failed", severity="permanent", reason="suppress-unsubscribe")
    for ignored in (mailgun_event("opened"), mailgun_event("accepted"), unsubscribed):
        assert mailgun_batch(ignored).ignored == 1
    assert mailgun_batch(mailgun_event("delivered", message={"headers": {}})).skipped == 1


MAILGUN_FIELDS = [
    "signature",
    "event-data",
    "timestamp",
    "token",
    "event",
    "severity",
    "reason",
    "delivery-status",
    "code",
    "enhanced-code",
    "message",
    "headers",
    "message-id",
    "id",
]


@given(json_values(MAILGUN_FIELDS))
def test_any_mailgun_json_is_a_batch_or_refused(value: Any) -> None:
    try:
        signed = mailgun.parse(orjson.dumps(value))
        mailgun.verify(MAILGUN, signed, now=NOW)
    except Refused:
        return


@given(json_values(MAILGUN_FIELDS))
def test_any_mailgun_event_data_is_a_batch(value: Any) -> None:
    event = value if isinstance(value, dict) else {"event": value}
    signed = mailgun.Signed(timestamp="1", token="t", signature="s", event=event)
    assert isinstance(mailgun.events(signed), Batch)


# --- Postmark -----------------------------------------------------------------------------


def basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (basic(b"hooks:secret"), True),
        ("basic " + base64.b64encode(b"hooks:secret").decode(), True),
        (basic(b"hooks:secret2"), False),
        (basic(b"hook:secret"), False),
        (basic(b"hookssecret"), False),
        (basic(b"hooks:"), False),
        ("Bearer secret", False),
        ("Basic not-base64!", False),
        ("", False),
        (None, False),
    ],
)
def test_postmark_basic_credentials(header: str | None, expected: bool) -> None:
    assert postmark.authorized(header, user=b"hooks", password=b"secret") is expected


@given(st.text(max_size=60))
def test_any_authorization_header_is_a_yes_or_no(header: str) -> None:
    assert postmark.authorized(header, user=b"hooks", password=b"secret") in (True, False)


def postmark_batch(record: dict[str, Any]) -> Batch:
    return postmark.events(orjson.dumps(record))


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            postmark_record("Bounce", Type="HardBounce", Details="smtp;550 5.1.1 unknown user"),
            ours("hard", "postmark", status="5.1.1"),
        ),
        (postmark_record("Bounce", Type="BadEmailAddress"), ours("hard", "postmark")),
        (postmark_record("Bounce", Type="Transient"), ours("soft", "postmark")),
        (postmark_record("Bounce", Type="DnsError"), ours("soft", "postmark")),
        (postmark_record("Bounce", Type="Blocked"), ours("policy", "postmark")),
        (
            postmark_record("Bounce", Type="HardBounce", Details="550 5.7.1 rejected"),
            ours("policy", "postmark", status="5.7.1"),
        ),
        (postmark_record("Bounce", Type="SpamComplaint"), ours("complaint", "postmark")),
        (postmark_record("SpamComplaint", Type="SpamComplaint"), ours("complaint", "postmark")),
        (postmark_record("Delivery"), ours("delivered", "postmark")),
        (
            postmark_record("Delivery", Metadata={"Message-ID": f"<{MESSAGE_ID}>"}),
            ours("delivered", "postmark"),
        ),
    ],
)
def test_postmark_records_map_to_feedback(record: dict[str, Any], expected: Event) -> None:
    assert postmark_batch(record).events == (expected,)


def test_postmark_records_without_our_metadata_or_of_other_types() -> None:
    assert postmark_batch(postmark_record("Delivery", Metadata=None)).skipped == 1
    assert postmark_batch(postmark_record("Delivery", Metadata={"message-id": "x@y"})).skipped == 1
    for ignored in ("AutoResponder", "Unsubscribe", "ManuallyDeactivated", "Unknown"):
        assert postmark_batch(postmark_record("Bounce", Type=ignored)).ignored == 1
    assert postmark_batch(postmark_record("Open")).ignored == 1
    with pytest.raises(Malformed):
        postmark_batch({"Type": "HardBounce"})


def test_a_postmark_retry_has_the_same_job_id() -> None:
    record = postmark_record("Bounce", Type="HardBounce")
    assert postmark_batch(record).job_id("postmark") == postmark_batch(dict(record)).job_id(
        "postmark"
    )
    other = {**record, "ID": record["ID"] + 1}
    assert postmark_batch(other).job_id("postmark") != postmark_batch(record).job_id("postmark")


POSTMARK_FIELDS = ["RecordType", "Type", "Details", "Metadata", "message-id", "ID", "MessageID"]


@given(json_values(POSTMARK_FIELDS))
def test_any_postmark_json_is_a_batch_or_malformed(value: Any) -> None:
    with contextlib.suppress(Malformed):
        postmark.events(orjson.dumps(value))


@given(st.binary(max_size=200))
def test_any_postmark_bytes_are_a_batch_or_malformed(body: bytes) -> None:
    with contextlib.suppress(Malformed):
        postmark.events(body)
