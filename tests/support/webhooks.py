"""Provider webhook requests as the providers make them, signed with keys the tests make:
an RSA key and self-signed certificate for Amazon SNS (served over real HTTPS from a local
server whose CA trustme makes), an ECDSA P-256 key for SendGrid, an HMAC key for Mailgun,
basic credentials for Postmark; and the `record_feedback` jobs that landed in Redis.

The strings to sign are built here from the providers' documentation, independently of
worker/provider_webhooks, so the tests check the formats rather than echo them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio
import trustme
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from worker import queue

TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-feedback"
OTHER_TOPIC = "arn:aws:sns:eu-west-1:123456789012:someone-else"
BOUNCE_DOMAIN = "bounces.example.com"
# An invitation's Message-ID as worker/message.py makes it, and its recipient.
MESSAGE_ID = "invitation-42@acme.example"
RECIPIENT = "bob.bounce@example.org"
MAILGUN_KEY = "mailgun-test-signing-key"
POSTMARK_USER = "postmark-hooks"
POSTMARK_PASSWORD = "postmark-test-password"

# The fields SNS signs, in order, by message type (SNS developer guide, "Verifying the
# signatures of Amazon SNS messages").
_NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_FIELDS = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)


@dataclass(frozen=True)
class SnsSigner:
    """An SNS signing key and its self-signed certificate."""

    key: rsa.RSAPrivateKey
    certificate_pem: bytes

    @classmethod
    def create(cls, *, not_after: datetime | None = None) -> SnsSigner:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(not_after or now + timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, certificate_pem=certificate.public_bytes(serialization.Encoding.PEM))

    def sign(self, message: dict[str, str], *, version: str = "2") -> dict[str, str]:
        """`message` with SignatureVersion and Signature as SNS adds them."""
        names = _NOTIFICATION_FIELDS if message["Type"] == "Notification" else _CONFIRMATION_FIELDS
        canonical = "".join(f"{n}\n{message[n]}\n" for n in names if n in message)
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303
        signature = self.key.sign(canonical.encode(), padding.PKCS1v15(), algorithm)
        return {
            **message,
            "SignatureVersion": version,
            "Signature": base64.b64encode(signature).decode(),
        }


def sns_notification(
    ses_event: dict[str, Any],
    *,
    cert_url: str,
    topic: str = TOPIC,
    message_id: str | None = None,
    subject: str | None = "Amazon SES Email Event Notification",
) -> dict[str, str]:
    """An unsigned SNS Notification carrying `ses_event` as its Message."""
    message = {
        "Type": "Notification",
        "MessageId": message_id or str(uuid.uuid4()),
        "TopicArn": topic,
        "Message": orjson.dumps(ses_event).decode(),
        "Timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z",
        "SigningCertURL": cert_url,
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe",
    }
    if subject is not None:
        message["Subject"] = subject
    return message


def sns_confirmation(*, cert_url: str, subscribe_url: str, topic: str = TOPIC) -> dict[str, str]:
    """An unsigned SNS SubscriptionConfirmation."""
    return {
        "Type": "SubscriptionConfirmation",
        "MessageId": str(uuid.uuid4()),
        "Token": "2336412f37fb687f5d51e6e2425c464de12884a8",
        "TopicArn": topic,
        "Message": f"You have chosen to subscribe to the topic {topic}.\n"
        "To confirm the subscription, visit the SubscribeURL included in this message.",
        "SubscribeURL": subscribe_url,
        "Timestamp": "2026-11-30T10:00:00.000Z",
        "SigningCertURL": cert_url,
    }


def ses_event(
    kind: str,
    *,
    message_id: str | None = MESSAGE_ID,
    source: str = "surveys@acme.example",
    bounce_type: str = "Permanent",
    status: str | None = "5.1.1",
    feedback_type: str = "abuse",
) -> dict[str, Any]:
    """An SES notification (Bounce, Complaint or Delivery) about one message to RECIPIENT,
    with the fields SES documents ("Amazon SNS notification contents for Amazon SES")."""
    headers = [{"name": "From", "value": "Acme <surveys@acme.example>"}]
    common: dict[str, Any] = {"from": ["Acme <surveys@acme.example>"], "to": [RECIPIENT]}
    if message_id is not None:
        headers.append({"name": "Message-ID", "value": f"<{message_id}>"})
        common["messageId"] = f"<{message_id}>"
    event: dict[str, Any] = {
        "notificationType": kind,
        "mail": {
            "timestamp": "2026-11-30T10:00:00.000Z",
            "messageId": "0102018c1f2e3d4c-aaaa-bbbb-cccc-000000000000-000000",
            "source": source,
            "destination": [RECIPIENT],
            "headersTruncated": False,
            "headers": headers,
            "commonHeaders": common,
        },
    }
    if kind == "Bounce":
        recipient: dict[str, Any] = {"emailAddress": RECIPIENT, "action": "failed"}
        if status is not None:
            recipient["status"] = status
            recipient["diagnosticCode"] = f"smtp; 550 {status} refused"
        event["bounce"] = {
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": [recipient],
            "timestamp": "2026-11-30T10:00:01.000Z",
            "feedbackId": "0102018c-feedback",
        }
    elif kind == "Complaint":
        event["complaint"] = {
            "complainedRecipients": [{"emailAddress": RECIPIENT}],
            "timestamp": "2026-11-30T10:00:01.000Z",
            "feedbackId": "0102018c-complaint",
            "complaintFeedbackType": feedback_type,
        }
    elif kind == "Delivery":
        event["delivery"] = {
            "timestamp": "2026-11-30T10:00:01.000Z",
            "recipients": [RECIPIENT],
            "smtpResponse": "250 ok",
        }
    return event


@dataclass
class SnsHost:
    """The local HTTPS server standing in for sns.<region>.amazonaws.com."""

    base_url: str
    ca_file: Path
    fetches: list[str] = field(default_factory=list)
    confirmations: list[str] = field(default_factory=list)

    def cert_url(self, name: str = "SimpleNotificationService-test.pem") -> str:
        return f"{self.base_url}/{name}"


@asynccontextmanager
async def sns_host(folder: Path, certificate_pem: bytes) -> AsyncIterator[SnsHost]:
    """Serve `certificate_pem` and a SubscribeURL over HTTPS on localhost (any free port),
    with a certificate from a CA of its own (written to `ca_file`)."""
    ca = trustme.CA()
    server_pem, ca_file = folder / "sns-server.pem", folder / "sns-ca.pem"
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    ca.cert_pem.write_to_path(str(ca_file))
    host = SnsHost(base_url="", ca_file=ca_file)

    async def certificate(request: Request) -> Response:
        host.fetches.append(request.url.path)
        if request.path_params["name"] == "missing.pem":
            return PlainTextResponse("Not Found", status_code=404)
        return Response(certificate_pem, media_type="application/x-x509-ca-cert")

    async def confirm(request: Request) -> Response:
        host.confirmations.append(str(request.query_params.get("Token", "")))
        return Response("<ConfirmSubscriptionResponse/>", media_type="text/xml")

    app = Starlette(
        routes=[
            Route("/confirm", confirm, methods=["GET"]),
            Route("/{name}", certificate, methods=["GET"]),
        ]
    )
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        ssl_certfile=str(server_pem),
        lifespan="off",
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the SNS stand-in stopped during start-up")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    host.base_url = f"https://localhost:{port}"
    try:
        yield host
    finally:
        server.should_exit = True
        await task


def sendgrid_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A SendGrid signing key and its public half as SendGrid shows it (base64 DER)."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, base64.b64encode(der).decode()


def sendgrid_headers(
    key: ec.EllipticCurvePrivateKey, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """The signature headers of SendGrid's Signed Event Webhook for `body`."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        "Content-Type": "application/json",
    }


def sendgrid_event(event: str, **fields: Any) -> dict[str, Any]:
    """One SendGrid event about MESSAGE_ID (fields as in SendGrid's Event Webhook reference)."""
    return {
        "email": RECIPIENT,
        "timestamp": int(time.time()),
        "smtp-id": f"<{MESSAGE_ID}>",
        "event": event,
        "sg_event_id": f"sg-{uuid.uuid4().hex}",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        **fields,
    }


def mailgun_body(
    event_data: dict[str, Any],
    *,
    key: str = MAILGUN_KEY,
    timestamp: int | None = None,
    token: str | None = None,
) -> bytes:
    """A Mailgun webhook body: `event-data` and its signature over timestamp + token."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    token = token or uuid.uuid4().hex + uuid.uuid4().hex[:18]
    digest = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    signature = {"timestamp": stamp, "token": token, "signature": digest}
    return orjson.dumps({"signature": signature, "event-data": event_data})


def mailgun_event(event: str, **fields: Any) -> dict[str, Any]:
    """One Mailgun event about MESSAGE_ID (fields as in Mailgun's webhook payloads)."""
    return {
        "id": uuid.uuid4().hex[:22],
        "timestamp": time.time(),
        "event": event,
        "recipient": RECIPIENT,
        "message": {"headers": {"message-id": MESSAGE_ID, "to": RECIPIENT}},
        **fields,
    }


def postmark_record(record_type: str, **fields: Any) -> dict[str, Any]:
    """One Postmark webhook record about MESSAGE_ID, carried in its metadata."""
    record: dict[str, Any] = {
        "RecordType": record_type,
        "MessageID": str(uuid.uuid4()),
        "ServerID": 23,
        "MessageStream": "outbound",
        "Metadata": {"message-id": MESSAGE_ID},
        "Tag": "",
    }
    if record_type == "Delivery":
        record |= {"Recipient": RECIPIENT, "DeliveredAt": "2026-11-30T10:00:01Z"}
    else:
        record |= {"ID": 4323372036, "Email": RECIPIENT, "BouncedAt": "2026-11-30T10:00:01Z"}
    return record | fields


def basic_auth(user: str = POSTMARK_USER, password: str = POSTMARK_PASSWORD) -> dict[str, str]:
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {credentials}"}


async def feedback_jobs(redis_url: str) -> dict[str, list[dict[str, Any]]]:
    """The queued `record_feedback` jobs: job id -> the events it carries."""
    client = redis.asyncio.from_url(redis_url)
    try:
        jobs = {}
        for job_id in await client.zrange("arq:queue", 0, -1):
            data = await client.get(b"arq:job:" + job_id)
            if data is None:
                continue
            job = queue.deserialize(data)
            if job["f"] == "record_feedback":
                (report,) = job["a"]
                jobs[job_id.decode()] = report["events"]
        return jobs
    finally:
        await client.aclose()
