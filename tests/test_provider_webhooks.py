"""Provider webhooks (SES through SNS, SendGrid, Mailgun, Postmark) on a real uvicorn server
and real Redis: what each accepts lands in Redis as one `record_feedback` job, everything
else is refused with nothing queued; and each provider once through the installed
`survey-worker web` with its settings from the environment."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from pydantic import SecretStr

from tests.faults.harness import wait_until
from tests.support.pipeline import add_client, csv_of, launch, parse, run_workers
from tests.support.smtp import RecordingHandler
from tests.support.web import assert_private, cli, private_logs, serving, start_cli
from tests.support.webhooks import (
    BOUNCE_DOMAIN,
    MAILGUN_KEY,
    MESSAGE_ID,
    OTHER_TOPIC,
    POSTMARK_PASSWORD,
    POSTMARK_USER,
    TOPIC,
    SnsHost,
    SnsSigner,
    basic_auth,
    feedback_jobs,
    mailgun_body,
    mailgun_event,
    postmark_record,
    sendgrid_event,
    sendgrid_headers,
    sendgrid_key,
    ses_event,
    sns_confirmation,
    sns_host,
    sns_notification,
)
from worker.dev import embedded
from worker.errors import ConfigError
from worker.settings import Settings
from worker.web import app as web
from worker.web.webhooks.providers import MAX_BODY

SENDGRID_PRIVATE, SENDGRID_PUBLIC = sendgrid_key()
VERP = f"b-{'a' * 36}@{BOUNCE_DOMAIN}"
PROVIDERS = ["ses", "sendgrid", "mailgun", "postmark"]


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    with private_logs() as captured:
        yield captured


@pytest.fixture(scope="module")
def signer() -> SnsSigner:
    return SnsSigner.create()


@pytest.fixture
async def sns(
    tmp_path: Path, signer: SnsSigner, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SnsHost]:
    """The SNS stand-in, its CA trusted by the app through SSL_CERT_FILE."""
    async with sns_host(tmp_path, signer.certificate_pem) as host:
        monkeypatch.setenv("SSL_CERT_FILE", str(host.ca_file))
        yield host


def webhook_settings(settings: Settings, **overrides: Any) -> Settings:
    """The test settings with every provider configured (`overrides` change some)."""
    return settings.model_copy(
        update={
            "ses_topic_arns": f"{TOPIC}, arn:aws:sns:us-east-1:123456789012:other",
            "sns_cert_host_pattern": r"localhost",
            "bounce_domain": BOUNCE_DOMAIN,
            "sendgrid_webhook_public_key": SENDGRID_PUBLIC,
            "mailgun_webhook_signing_key": SecretStr(MAILGUN_KEY),
            "postmark_webhook_user": POSTMARK_USER,
            "postmark_webhook_password": SecretStr(POSTMARK_PASSWORD),
            **overrides,
        }
    )


def json_body(value: object) -> bytes:
    return orjson.dumps(value)


# --- Amazon SES through SNS ---------------------------------------------------------------


async def test_ses_notifications_are_queued_one_job_each(
    settings: Settings, sns: SnsHost, signer: SnsSigner
) -> None:
    cert = sns.cert_url()
    notifications = [
        (ses_event("Bounce", status="5.1.1"), "2"),
        (ses_event("Bounce", status="5.7.1"), "1"),
        (ses_event("Bounce", bounce_type="Transient", status="4.2.2"), "2"),
        (ses_event("Bounce", bounce_type="Undetermined", status=None), "2"),
        (ses_event("Complaint", message_id=None, source=VERP), "1"),
        (ses_event("Delivery"), "2"),
    ]
    async with (
        serving(webhook_settings(settings)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        responses = [
            await client.post(
                "/webhooks/ses",
                content=json_body(signer.sign(sns_notification(event, cert_url=cert), version=v)),
                headers={"Content-Type": "text/plain; charset=UTF-8"},
            )
            for event, v in notifications
        ]
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.json() == {"accepted": 1, "skipped": 0, "ignored": 0, "duplicates": 0}
    jobs = await feedback_jobs(settings.redis_url or "")
    assert len(jobs) == 6
    assert all(job_id.startswith("record_feedback:ses:") for job_id in jobs)
    ours = {"source": "ses", "message_id": MESSAGE_ID}
    assert sorted(jobs.values(), key=repr) == sorted(
        [
            [{"kind": "hard", "status": "5.1.1", **ours}],
            [{"kind": "policy", "status": "5.7.1", **ours}],
            [{"kind": "soft", "status": "4.2.2", **ours}],
            [{"kind": "soft", **ours}],
            [{"kind": "complaint", "source": "ses", "verp": VERP}],
            [{"kind": "delivered", **ours}],
        ],
        key=repr,
    )
    # The signing certificate was fetched once and kept.
    assert sns.fetches == ["/SimpleNotificationService-test.pem"]


async def test_ses_retry_is_one_job_and_foreign_or_other_events_queue_nothing(
    settings: Settings, sns: SnsHost, signer: SnsSigner
) -> None:
    cert = sns.cert_url()
    bounce = json_body(signer.sign(sns_notification(ses_event("Bounce"), cert_url=cert)))
    foreign = ses_event("Bounce", message_id="0100018c@email.amazonses.com")
    foreign["mail"]["source"] = "someone@elsewhere.example"
    others = [
        foreign,
        ses_event("Complaint", feedback_type="not-spam"),
        {**ses_event("Delivery"), "notificationType": "Received"},
        {"eventType": "Open", "mail": ses_event("Delivery")["mail"], "open": {}},
    ]
    async with (
        serving(webhook_settings(settings)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        first = await client.post("/webhooks/ses", content=bounce)
        retry = await client.post("/webhooks/ses", content=bounce)
        answers = [
            await client.post(
                "/webhooks/ses",
                content=json_body(signer.sign(sns_notification(event, cert_url=cert))),
            )
            for event in others
        ]
    assert first.status_code == retry.status_code == 200
    assert len(await feedback_jobs(settings.redis_url or "")) == 1
    assert [a.status_code for a in answers] == [200] * 4
    assert [a.json()["accepted"] for a in answers] == [0, 0, 0, 0]
    assert answers[0].json()["skipped"] == 1
    assert [a.json()["ignored"] for a in answers[1:]] == [1, 1, 1]


async def test_ses_subscription_is_confirmed_after_the_signature(
    settings: Settings, sns: SnsHost, signer: SnsSigner
) -> None:
    cert = sns.cert_url()
    confirmation = signer.sign(
        sns_confirmation(cert_url=cert, subscribe_url=f"{sns.base_url}/confirm?Token=abc")
    )
    forged = {**confirmation, "SubscribeURL": f"{sns.base_url}/confirm?Token=forged"}
    elsewhere = signer.sign(
        sns_confirmation(cert_url=cert, subscribe_url="https://127.0.0.1:9/confirm?Token=x")
    )
    async with (
        serving(webhook_settings(settings)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        refused = await client.post("/webhooks/ses", content=json_body(forged))
        off_host = await client.post("/webhooks/ses", content=json_body(elsewhere))
        confirmed = await client.post("/webhooks/ses", content=json_body(confirmation))
    assert refused.status_code == off_host.status_code == 401
    assert confirmed.status_code == 200
    assert confirmed.json() == {"confirmed": True}
    assert sns.confirmations == ["abc"]
    assert await feedback_jobs(settings.redis_url or "") == {}


def _ses_refusals(host: SnsHost, signer: SnsSigner) -> dict[str, dict[str, str]]:
    cert = host.cert_url()
    good = sns_notification(ses_event("Bounce"), cert_url=cert)
    signed = signer.sign(good)
    port = host.base_url.rpartition(":")[2]
    return {
        "forged signature": {**signed, "Message": signed["Message"].replace("5.1.1", "4.1.1")},
        "signature of another key": SnsSigner.create().sign(good),
        "wrong topic": signer.sign({**good, "TopicArn": OTHER_TOPIC}),
        "cert host not matching": signer.sign(
            {**good, "SigningCertURL": f"https://127.0.0.1:{port}/cert.pem"}
        ),
        "http cert URL": signer.sign(
            {**good, "SigningCertURL": cert.replace("https://", "http://")}
        ),
        # urlsplit drops the tab and sees the stand-in's host; httpx would refuse the URL.
        "tab in cert URL host": signer.sign(
            {**good, "SigningCertURL": cert.replace("localhost", "local\thost")}
        ),
        "tab in cert URL path": signer.sign(
            {**good, "SigningCertURL": cert.replace(".pem", "\t.pem")}
        ),
        "no certificate there": signer.sign(
            {**good, "SigningCertURL": host.cert_url("missing.pem")}
        ),
        "unknown signature version": {**signed, "SignatureVersion": "3"},
        "signature not base64": {**signed, "Signature": "not base64!"},
    }


@pytest.mark.parametrize(
    "case",
    [
        "forged signature",
        "signature of another key",
        "wrong topic",
        "cert host not matching",
        "http cert URL",
        "tab in cert URL host",
        "tab in cert URL path",
        "no certificate there",
        "unknown signature version",
        "signature not base64",
    ],
)
async def test_ses_refuses_what_sns_did_not_sign_for_our_topics(
    settings: Settings, sns: SnsHost, signer: SnsSigner, case: str
) -> None:
    body = json_body(_ses_refusals(sns, signer)[case])
    async with (
        serving(webhook_settings(settings)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        response = await client.post("/webhooks/ses", content=body)
    assert response.status_code == 401
    assert set(response.json()) == {"error"}
    assert await feedback_jobs(settings.redis_url or "") == {}
    if case in ("wrong topic", "cert host not matching", "http cert URL") or "tab" in case:
        assert sns.fetches == []  # refused before anything was fetched


async def test_ses_expired_signing_certificate_is_refused(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expired = SnsSigner.create(not_after=datetime.now(UTC) - timedelta(minutes=1))
    async with sns_host(tmp_path, expired.certificate_pem) as host:
        monkeypatch.setenv("SSL_CERT_FILE", str(host.ca_file))
        body = json_body(
            expired.sign(sns_notification(ses_event("Bounce"), cert_url=host.cert_url()))
        )
        async with (
            serving(webhook_settings(settings)) as base,
            httpx.AsyncClient(base_url=base) as client,
        ):
            response = await client.post("/webhooks/ses", content=body)
    assert response.status_code == 401
    assert await feedback_jobs(settings.redis_url or "") == {}


async def test_ses_certificate_host_not_trusted_is_refused(
    settings: Settings, sns: SnsHost, signer: SnsSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The system's CA store does not know the stand-in's CA: the fetch fails, nothing is
    # queued, and SNS is asked to try again.
    monkeypatch.delenv("SSL_CERT_FILE")
    body = json_body(signer.sign(sns_notification(ses_event("Bounce"), cert_url=sns.cert_url())))
    async with (
        serving(webhook_settings(settings)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        response = await client.post("/webhooks/ses", content=body)
    assert response.status_code == 503
    assert await feedback_jobs(settings.redis_url or "") == {}


# --- SendGrid -------------------------------------------------------------------------------


async def test_sendgrid_batch_is_one_job_with_each_event_mapped(settings: Settings) -> None:
    repeated = sendgrid_event("delivered")
    batch = [
        sendgrid_event("bounce", type="bounce", status="5.1.1", reason="550 5.1.1 no such user"),
        sendgrid_event("bounce", type="bounce", status="5.7.1", reason="550 5.7.1 policy"),
        sendgrid_event("bounce", type="blocked", status="5.0.0", reason="blocked by list"),
        sendgrid_event("dropped", reason="Bounced Address", status="5.0.0"),
        sendgrid_event("dropped", reason="Unsubscribed Address"),
        sendgrid_event("deferred", response="421 4.7.0 try again later", attempt="1"),
        repeated,
        repeated,
        sendgrid_event("spamreport"),
        sendgrid_event("open", useragent="Mozilla/5.0"),
        sendgrid_event("delivered", **{"smtp-id": "<5515E0B88.16648@ismtpd-555>"}),
    ]
    body = json_body(batch)
    async with (
        serving(webhook_settings(settings)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        first = await client.post(
            "/webhooks/sendgrid", content=body, headers=sendgrid_headers(SENDGRID_PRIVATE, body)
        )
        retry = await client.post(
            "/webhooks/sendgrid", content=body, headers=sendgrid_headers(SENDGRID_PRIVATE, body)
        )
    assert first.status_code == retry.status_code == 200, first.text
    assert first.json() == {"accepted": 7, "skipped": 1, "ignored": 2, "duplicates": 1}
    jobs = await feedback_jobs(settings.redis_url or "")
    assert len(jobs) == 1
    ((job_id, events),) = jobs.items()
    assert job_id.startswith("record_feedback:sendgrid:")
    ours = {"source": "sendgrid", "message_id": MESSAGE_ID}
    assert events == [
        {"kind": "hard", "status": "5.1.1", **ours},
        {"kind": "policy", "status": "5.7.1", **ours},
        {"kind": "policy", "status": "5.0.0", **ours},
        {"kind": "hard", **ours},
        {"kind": "soft", "status": "4.7.0", **ours},
        {"kind": "delivered", **ours},
        {"kind": "complaint", **ours},
    ]


@pytest.mark.parametrize(
    "case", ["forged", "another key", "old timestamp", "future timestamp", "no signature"]
)
async def test_sendgrid_refuses_unsigned_forged_and_stale_requests(
    settings: Settings, case: str
) -> None:
    body = json_body([sendgrid_event("bounce", type="bounce", status="5.1.1")])
    headers = sendgrid_headers(SENDGRID_PRIVATE, body)
    if case == "forged":
        body = body.replace(b"5.1.1", b"4.1.1")
    elif case == "another key":
        headers = sendgrid_headers(sendgrid_key()[0], body)
    elif case == "old timestamp":
        headers = sendgrid_headers(SENDGRID_PRIVATE, body, timestamp=int(time.time()) - 301)
    elif case == "future timestamp":
        headers = sendgrid_headers(SENDGRID_PRIVATE, body, timestamp=int(time.time()) + 400)
    else:
        headers = {"Content-Type": "application/json"}
    async with (
        serving(webhook_settings(settings)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        response = await client.post("/webhooks/sendgrid", content=body, headers=headers)
    assert response.status_code == 401
    assert await feedback_jobs(settings.redis_url or "") == {}


# --- Mailgun --------------------------------------------------------------------------------


async def test_mailgun_events_are_queued_and_a_token_is_good_once(settings: Settings) -> None:
    events = [
        mailgun_event(
            "failed",
            severity="permanent",
            reason="bounce",
            **{"delivery-status": {"code": 550, "enhanced-code": "5.1.1", "message": "no"}},
        ),
        mailgun_event(
            "failed",
            severity="permanent",
            reason="generic",
            **{"delivery-status": {"code": 550, "message": "5.7.1 rejected by policy"}},
        ),
        mailgun_event(
            "failed",
            severity="temporary",
            reason="generic",
            **{"delivery-status": {"code": 452, "message": "4.2.2 mailbox full"}},
        ),
        mailgun_event("complained"),
        mailgun_event("delivered"),
    ]
    bodies = [mailgun_body(e) for e in events]
    opened = mailgun_body(mailgun_event("opened"))
    async with (
        serving(webhook_settings(settings)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        answers = [await client.post("/webhooks/mailgun", content=b) for b in bodies]
        ignored = await client.post("/webhooks/mailgun", content=opened)
        replayed = await client.post("/webhooks/mailgun", content=bodies[0])
    assert [a.status_code for a in answers] == [200] * 5
    assert ignored.json() == {"accepted": 0, "skipped": 0, "ignored": 1, "duplicates": 0}
    assert replayed.status_code == 401
    jobs = await feedback_jobs(settings.redis_url or "")
    ours = {"source": "mailgun", "message_id": MESSAGE_ID}
    assert sorted(jobs.values(), key=repr) == sorted(
        [
            [{"kind": "hard", "status": "5.1.1", **ours}],
            [{"kind": "policy", "status": "5.7.1", **ours}],
            [{"kind": "soft", "status": "4.2.2", **ours}],
            [{"kind": "complaint", **ours}],
            [{"kind": "delivered", **ours}],
        ],
        key=repr,
    )


@pytest.mark.parametrize(
    "case", ["forged token", "forged timestamp", "another key", "old timestamp"]
)
async def test_mailgun_refuses_forged_and_stale_requests(settings: Settings, case: str) -> None:
    # Mailgun signs the timestamp and token, not the event: those are what a forger changes.
    event = mailgun_event("failed", severity="permanent", reason="bounce")
    stamp = int(time.time())
    if case == "forged token":
        body = mailgun_body(event, token="a" * 50).replace(b'"' + b"a" * 50, b'"' + b"b" * 50)
    elif case == "forged timestamp":
        body = mailgun_body(event, timestamp=stamp).replace(
            str(stamp).encode(), str(stamp + 1).encode()
        )
    elif case == "another key":
        body = mailgun_body(event, key="not-the-key")
    else:
        body = mailgun_body(event, timestamp=int(time.time()) - 301)
    async with (
        serving(webhook_settings(settings)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        response = await client.post("/webhooks/mailgun", content=body)
    assert response.status_code == 401
    assert await feedback_jobs(settings.redis_url or "") == {}


# --- Postmark -------------------------------------------------------------------------------


async def test_postmark_records_are_matched_by_their_metadata(settings: Settings) -> None:
    records = [
        postmark_record("Bounce", Type="HardBounce", TypeCode=1, Details="smtp;550 5.1.1 unknown"),
        postmark_record("Bounce", Type="SoftBounce", TypeCode=4096, Details="mailbox full"),
        postmark_record("Bounce", Type="Blocked", TypeCode=100006, Details="blocked"),
        postmark_record("SpamComplaint", Type="SpamComplaint", TypeCode=512),
        postmark_record("Delivery", Details="250 ok"),
    ]
    unmatched = postmark_record("Bounce", Type="HardBounce", TypeCode=1, Metadata={})
    auto_reply = postmark_record("Bounce", Type="AutoResponder", TypeCode=64)
    async with (
        serving(webhook_settings(settings)) as base,
        httpx.AsyncClient(base_url=base, headers=basic_auth()) as client,
    ):
        answers = [await client.post("/webhooks/postmark", json=r) for r in records]
        skipped = await client.post("/webhooks/postmark", json=unmatched)
        ignored = await client.post("/webhooks/postmark", json=auto_reply)
    assert [a.status_code for a in answers] == [200] * 5
    assert skipped.json() == {"accepted": 0, "skipped": 1, "ignored": 0, "duplicates": 0}
    assert ignored.json() == {"accepted": 0, "skipped": 0, "ignored": 1, "duplicates": 0}
    jobs = await feedback_jobs(settings.redis_url or "")
    ours = {"source": "postmark", "message_id": MESSAGE_ID}
    assert sorted(jobs.values(), key=repr) == sorted(
        [
            [{"kind": "hard", "status": "5.1.1", **ours}],
            [{"kind": "soft", **ours}],
            [{"kind": "policy", **ours}],
            [{"kind": "complaint", **ours}],
            [{"kind": "delivered", **ours}],
        ],
        key=repr,
    )


@pytest.mark.parametrize("case", ["no credentials", "wrong password", "wrong user", "bearer"])
async def test_postmark_refuses_wrong_credentials(settings: Settings, case: str) -> None:
    headers = {
        "no credentials": {},
        "wrong password": basic_auth(password="guess"),
        "wrong user": basic_auth(user="someone"),
        "bearer": {"Authorization": f"Bearer {POSTMARK_PASSWORD}"},
    }[case]
    async with (
        serving(webhook_settings(settings)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        response = await client.post(
            "/webhooks/postmark", json=postmark_record("Delivery"), headers=headers
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic ")
    assert await feedback_jobs(settings.redis_url or "") == {}


# --- Every provider -------------------------------------------------------------------------


def signed_request(provider: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    """`body` as an authenticated request of `provider` (SNS and Mailgun sign in the body,
    so theirs is wrapped)."""
    if provider == "sendgrid":
        return body, sendgrid_headers(SENDGRID_PRIVATE, body)
    if provider == "postmark":
        return body, basic_auth()
    return body, {}


MALFORMED = [b"", b"not json", b"[", b"{}", b"[1, 2]", b'"text"', b"\xff\xfe", b"null"]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_malformed_bodies_are_400_with_a_reason_never_500(
    settings: Settings, sns: SnsHost, signer: SnsSigner, provider: str
) -> None:
    bodies = list(MALFORMED)
    if provider == "ses":
        # Signed SNS envelopes whose SES event is not one.
        for message in ("not json", "[]", '{"notificationType": "Bounce"}'):
            signed = signer.sign(
                {**sns_notification({}, cert_url=sns.cert_url()), "Message": message}
            )
            bodies.append(json_body(signed))
    if provider == "mailgun":
        bodies.append(json_body({"signature": {"timestamp": "1", "token": "t"}, "event-data": {}}))
        bodies.append(json_body({"signature": [], "event-data": {}}))
    async with (
        serving(webhook_settings(settings)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        responses = []
        for body in bodies:
            content, headers = signed_request(provider, body)
            responses.append(
                await client.post(f"/webhooks/{provider}", content=content, headers=headers)
            )
    for body, response in zip(bodies, responses, strict=True):
        assert response.status_code in (400, 401), (body, response.status_code)
        assert set(response.json()) == {"error"}
        assert len(response.json()["error"]) < 80
    if provider in ("sendgrid", "postmark"):
        # Authenticated first, so every one of these is a 400.
        assert {r.status_code for r in responses} == {400}
    assert await feedback_jobs(settings.redis_url or "") == {}


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_an_unset_provider_is_a_404(settings: Settings, provider: str) -> None:
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as client:
        response = await client.post(f"/webhooks/{provider}", content=b"[]", headers=basic_auth())
        get = await client.get(f"/webhooks/{provider}")
    assert response.status_code == 404
    assert get.status_code in (404, 405)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("declared", [True, False])
async def test_an_oversized_body_is_a_413(
    settings: Settings, provider: str, declared: bool
) -> None:
    body = b"[" + b" " * MAX_BODY + b"]"
    headers = basic_auth() if provider == "postmark" else {}

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    async with (
        serving(webhook_settings(settings)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        response = await client.post(
            f"/webhooks/{provider}", content=body if declared else chunks(), headers=headers
        )
    assert response.status_code == 413
    assert await feedback_jobs(settings.redis_url or "") == {}


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_redis_down_is_a_503_so_the_provider_retries(
    settings: Settings, sns: SnsHost, signer: SnsSigner, provider: str
) -> None:
    down = f"redis://127.0.0.1:{embedded.free_port()}/0"
    request = accepted_request(provider, sns, signer)
    async with (
        serving(webhook_settings(settings), redis_url=down) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        response = await client.post(
            f"/webhooks/{provider}", content=request[0], headers=request[1]
        )
    assert response.status_code == 503
    assert set(response.json()) == {"error"}


async def test_a_mailgun_retry_after_a_503_is_not_taken_for_a_replay(settings: Settings) -> None:
    body = mailgun_body(mailgun_event("delivered"))
    down = f"redis://127.0.0.1:{embedded.free_port()}/0"
    async with (
        serving(webhook_settings(settings), redis_url=down) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        unavailable = await client.post("/webhooks/mailgun", content=body)
    async with (
        serving(webhook_settings(settings)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        retried = await client.post("/webhooks/mailgun", content=body)
    assert unavailable.status_code == 503
    assert retried.status_code == 200
    assert len(await feedback_jobs(settings.redis_url or "")) == 1


def accepted_request(
    provider: str, host: SnsHost, signer: SnsSigner
) -> tuple[bytes, dict[str, str]]:
    """A request of `provider` that is accepted with one event about MESSAGE_ID."""
    if provider == "ses":
        notification = sns_notification(ses_event("Bounce"), cert_url=host.cert_url())
        return json_body(signer.sign(notification)), {}
    if provider == "sendgrid":
        body = json_body([sendgrid_event("bounce", type="bounce", status="5.1.1")])
        return body, sendgrid_headers(SENDGRID_PRIVATE, body)
    if provider == "mailgun":
        event = mailgun_event(
            "failed", severity="permanent", **{"delivery-status": {"enhanced-code": "5.1.1"}}
        )
        return mailgun_body(event), {}
    record = postmark_record("Bounce", Type="HardBounce", TypeCode=1, Details="5.1.1")
    return json_body(record), basic_auth()


async def test_log_lines_name_provider_and_counts_only(
    settings: Settings, sns: SnsHost, signer: SnsSigner, logs: list[dict[str, Any]]
) -> None:
    async with (
        serving(webhook_settings(settings)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        for provider in PROVIDERS:
            content, headers = accepted_request(provider, sns, signer)
            assert (
                await client.post(f"/webhooks/{provider}", content=content, headers=headers)
            ).status_code == 200
        await client.post("/webhooks/postmark", json=postmark_record("Delivery"))
    accepted = [line for line in logs if line["event"] == "webhook.accepted"]
    assert [line["provider"] for line in accepted] == PROVIDERS
    assert all(line["accepted"] == 1 for line in accepted)
    refused = [line for line in logs if line["event"] == "webhook.refused"]
    assert [(r["provider"], r["status"]) for r in refused] == [("postmark", 401)]
    routes = {line["route"] for line in logs if line["event"] == "http.request"}
    assert routes == {f"{p}_webhook" for p in PROVIDERS}
    text = orjson.dumps(logs).decode()
    assert MAILGUN_KEY not in text and POSTMARK_PASSWORD not in text and MESSAGE_ID not in text


# --- Through the installed command ----------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_survey_worker_web_takes_each_providers_events(
    settings: Settings, sns: SnsHost, signer: SnsSigner, provider: str
) -> None:
    port = embedded.free_port()
    env = {
        "SES_TOPIC_ARNS": TOPIC,
        "SNS_CERT_HOST_PATTERN": "localhost",
        "SSL_CERT_FILE": str(sns.ca_file),
        "BOUNCE_DOMAIN": BOUNCE_DOMAIN,
        "SENDGRID_WEBHOOK_PUBLIC_KEY": SENDGRID_PUBLIC,
        "MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_KEY,
        "POSTMARK_WEBHOOK_USER": POSTMARK_USER,
        "POSTMARK_WEBHOOK_PASSWORD": POSTMARK_PASSWORD,
    }
    process = await start_cli(settings, "web", "--port", str(port), env=env)
    base = f"http://127.0.0.1:{port}"
    try:

        async def answers() -> bool:
            async with httpx.AsyncClient() as client:
                try:
                    return (await client.get(f"{base}/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

        await wait_until(answers, timeout=60, what="survey-worker web")
        content, headers = accepted_request(provider, sns, signer)
        async with httpx.AsyncClient(base_url=base) as client:
            response = await client.post(f"/webhooks/{provider}", content=content, headers=headers)
            again = await client.post(f"/webhooks/{provider}", content=content, headers=headers)
    finally:
        process.terminate()
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert response.status_code == 200, (response.text, stderr.decode()[-2000:])
    assert response.json()["accepted"] == 1
    # SES, SendGrid and Postmark deliveries repeat as one job; Mailgun's token is good once.
    assert again.status_code == (401 if provider == "mailgun" else 200)
    jobs = await feedback_jobs(settings.redis_url or "")
    assert list(jobs.values()) == [
        [{"kind": "hard", "source": provider, "status": "5.1.1", "message_id": MESSAGE_ID}]
    ]
    assert_private(stdout.decode() + stderr.decode())
    lines = [orjson.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    assert any(
        line["event"] == "webhook.accepted" and line["provider"] == provider for line in lines
    )


async def test_an_unusable_sendgrid_key_stops_survey_worker_web_with_one_line(
    settings: Settings,
) -> None:
    with pytest.raises(ConfigError, match="SENDGRID_WEBHOOK_PUBLIC_KEY"):
        web.create_app(
            webhook_settings(settings, sendgrid_webhook_public_key="not a key"),
            settings.database_url or "",
            settings.redis_url or "",
        )
    done = await cli(
        settings,
        "web",
        "--port",
        str(embedded.free_port()),
        env={"SENDGRID_WEBHOOK_PUBLIC_KEY": "bm90IGEga2V5"},
    )
    assert done.code == 1
    assert done.stderr.splitlines()[-1] == (
        "Error: SENDGRID_WEBHOOK_PUBLIC_KEY: not a public key in base64 DER or PEM"
    )


# --- End to end -----------------------------------------------------------------------------


async def test_a_signed_ses_bounce_puts_the_address_on_the_bounce_list(
    pg: asyncpg.Pool,
    settings: Settings,
    smtp: tuple[RecordingHandler, int],
    sns: SnsHost,
    signer: SnsSigner,
) -> None:
    hooks = webhook_settings(settings)
    handler = smtp[0]
    await add_client(pg, "acme")
    await launch(pg, hooks, csv_of("ann@example.com", "bob@example.com"))
    await run_workers(hooks)
    ann = next(m for m in handler.messages if m.recipients == ("ann@example.com",))
    event = ses_event("Bounce", message_id=str(parse(ann)["Message-ID"]).strip("<>"))
    event["mail"]["source"] = ann.sender
    notification = signer.sign(sns_notification(event, cert_url=sns.cert_url()))
    async with serving(hooks) as base, httpx.AsyncClient(base_url=base) as client:
        response = await client.post("/webhooks/ses", content=json_body(notification))
    assert response.json()["accepted"] == 1
    await run_workers(hooks)

    assert await launch_again(pg, hooks, handler) == (
        [("bob@example.com",)],
        [("ann@example.com", "bounced")],
    )


async def launch_again(
    pg: asyncpg.Pool, hooks: Settings, handler: RecordingHandler
) -> tuple[list[tuple[str, ...]], list[tuple[str, str]]]:
    """Launch ann and bob once more: who was mailed, and who was suppressed and why."""
    handler.messages.clear()
    second = await launch(pg, hooks, csv_of("ann@example.com", "bob@example.com"))
    await run_workers(hooks)
    suppressed = await pg.fetch(
        "SELECT email, reason FROM invitations WHERE campaign_id = $1 AND state = 'suppressed'",
        second.campaign_id,
    )
    return [m.recipients for m in handler.messages], [(r["email"], r["reason"]) for r in suppressed]


async def test_a_sendgrid_policy_block_with_status_5_0_0_lists_no_one(
    pg: asyncpg.Pool, settings: Settings, smtp: tuple[RecordingHandler, int]
) -> None:
    """SendGrid's `status: 5.0.0` defers to the reason's 5.7.1 (a Spamhaus block, the
    sender's problem); 5.0.0 beside 550 5.1.1 is still a hard bounce."""
    hooks = webhook_settings(settings)
    handler = smtp[0]
    await add_client(pg, "acme")
    await launch(pg, hooks, csv_of("ann@example.com", "bob@example.com"))
    await run_workers(hooks)
    ids = {m.recipients[0]: str(parse(m)["Message-ID"]) for m in handler.messages}
    body = json_body(
        [
            sendgrid_event(
                "bounce",
                type="bounce",
                status="5.0.0",
                reason="550 5.7.1 Service unavailable; Client host blocked using Spamhaus",
                **{"smtp-id": ids["ann@example.com"]},
            ),
            sendgrid_event(
                "bounce",
                type="bounce",
                status="5.0.0",
                reason="550 5.1.1 The email account that you tried to reach does not exist",
                **{"smtp-id": ids["bob@example.com"]},
            ),
        ]
    )
    async with serving(hooks) as base, httpx.AsyncClient(base_url=base) as client:
        response = await client.post(
            "/webhooks/sendgrid", content=body, headers=sendgrid_headers(SENDGRID_PRIVATE, body)
        )
    assert response.json()["accepted"] == 2
    await run_workers(hooks)
    assert [r["kind"] for r in await pg.fetch("SELECT kind FROM bounces")] == ["hard"]

    assert await launch_again(pg, hooks, handler) == (
        [("ann@example.com",)],
        [("bob@example.com", "bounced")],
    )
