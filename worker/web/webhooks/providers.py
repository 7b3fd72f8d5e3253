"""Provider webhooks: bounces, complaints and deliveries reported by Amazon SES (through
Amazon SNS), SendGrid, Mailgun and Postmark, each request queued as one `record_feedback`
job for the workers to apply.

    POST /webhooks/ses        SNS messages (SES_TOPIC_ARNS)
    POST /webhooks/sendgrid   SendGrid's signed Event Webhook (SENDGRID_WEBHOOK_PUBLIC_KEY)
    POST /webhooks/mailgun    Mailgun's webhooks (MAILGUN_WEBHOOK_SIGNING_KEY)
    POST /webhooks/postmark   Postmark's webhooks (POSTMARK_WEBHOOK_USER / _PASSWORD)

A provider whose setting is unset answers 404. Each request is authenticated before its
events are read (401, nothing queued, when it is not the provider's); a body that is not
what the provider sends is a 400 with a short JSON reason; a body over `MAX_BODY` a 413.
An accepted request's events are queued as ONE job whose id is derived from the
provider's ids, so a provider's retry is a no-op while the job waits; when Redis does not
take it the answer is 503 and the provider tries again. The answer counts the events
queued, skipped (naming no message of ours), ignored (other types) and repeated. Log lines
carry the provider, the outcome and counts, never an address, token or secret.

The parsing and verifying are the pure functions of `ses`, `sendgrid`, `mailgun` and
`postmark`; this module holds the endpoints, which only read, call them and enqueue.
"""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from worker.errors import (
    ConfigError,
    QueueUnavailable,
    Refused,
    Unauthenticated,
    Unavailable,
)
from worker.settings import Settings
from worker.web import http
from worker.web.webhooks import mailgun, postmark, sendgrid, ses
from worker.web.webhooks.core import Batch

__all__ = ["MAX_BODY", "ROUTES", "FeedbackQueue", "WebhookConfig", "Webhooks", "running"]

log = structlog.get_logger("worker.provider_webhooks")

# The largest body accepted: SNS messages are at most 256 KB, SendGrid batches and
# Postmark records (with bounce content) far less than this.
MAX_BODY = 4 * 1024 * 1024
# Fetching an SNS signing certificate or confirming a subscription.
HTTP_TIMEOUT = 5.0
# Signing certificates kept (by URL): SNS uses a handful at a time.
CERTIFICATE_CACHE_SIZE = 32


class FeedbackQueue(Protocol):
    """What the webhooks need of Redis (the web app's backends); each method raises
    QueueUnavailable when Redis cannot do it."""

    async def enqueue_feedback(self, report: dict[str, Any], *, job_id: str) -> None:
        """Queue a `record_feedback` job (a no-op while one with `job_id` is queued)."""

    async def remember(self, key: str, *, seconds: int) -> bool:
        """Set `key` for `seconds` unless it is set (SET NX EX); whether it was not."""

    async def forget(self, key: str) -> None:
        """Delete `key`."""


@dataclass(frozen=True)
class WebhookConfig:
    """The providers' settings, checked once at start-up; None: that provider is off."""

    topic_arns: frozenset[str]
    cert_host_pattern: re.Pattern[str]
    sendgrid_key: ec.EllipticCurvePublicKey | None
    mailgun_key: bytes | None
    postmark_credentials: tuple[bytes, bytes] | None
    bounce_domain: str | None

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookConfig:
        """The webhook settings; ConfigError when SENDGRID_WEBHOOK_PUBLIC_KEY is unusable."""
        sendgrid_key = None
        if settings.sendgrid_webhook_public_key:
            try:
                sendgrid_key = sendgrid.load_public_key(settings.sendgrid_webhook_public_key)
            except ValueError as e:
                raise ConfigError(f"SENDGRID_WEBHOOK_PUBLIC_KEY: {e}") from None
        mailgun_key = settings.mailgun_webhook_signing_key
        postmark_user, postmark_password = (
            settings.postmark_webhook_user,
            settings.postmark_webhook_password,
        )
        return cls(
            topic_arns=settings.topic_arns(),
            cert_host_pattern=re.compile(settings.sns_cert_host_pattern),
            sendgrid_key=sendgrid_key,
            mailgun_key=mailgun_key.get_secret_value().encode() if mailgun_key else None,
            postmark_credentials=(
                (postmark_user.encode(), postmark_password.get_secret_value().encode())
                if postmark_user and postmark_password
                else None
            ),
            bounce_domain=settings.bounce_domain,
        )


class Webhooks:
    """The webhooks' state in the app's lifespan: settings, the queue, an HTTP client for
    SNS, and the SNS signing certificates fetched so far."""

    def __init__(
        self,
        config: WebhookConfig,
        queue: FeedbackQueue,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.queue = queue
        self.http = http
        self.clock = clock
        self._certificates: dict[str, x509.Certificate] = {}

    async def ses(self, request: Request) -> Batch | Response:
        """An SNS message: verified, then a subscription confirmed or SES events read."""
        message = ses.parse(await _body(request))
        if message.topic_arn not in self.config.topic_arns:
            raise Unauthenticated("TopicArn is not in SES_TOPIC_ARNS")
        cert_url = ses.sns_url(
            message.signing_cert_url, self.config.cert_host_pattern, field="SigningCertURL"
        )
        ses.verify(message, await self._signing_key(cert_url))
        if message.type == "SubscriptionConfirmation":
            await self._confirm(message.subscribe_url or "")
            log.info("webhook.subscription_confirmed", provider="ses")
            return JSONResponse({"confirmed": True})
        if message.type == "UnsubscribeConfirmation":
            return Batch(ignored=1, ids=(message.message_id,))
        batch = ses.events(message, bounce_domain=self.config.bounce_domain)
        return await self._enqueue("ses", batch)

    async def sendgrid(self, request: Request) -> Batch:
        """A signed batch of SendGrid events."""
        assert self.config.sendgrid_key is not None
        body = await _body(request)
        sendgrid.verify(
            self.config.sendgrid_key,
            signature=request.headers.get(sendgrid.SIGNATURE_HEADER),
            timestamp=request.headers.get(sendgrid.TIMESTAMP_HEADER),
            body=body,
            now=self.clock(),
        )
        return await self._enqueue("sendgrid", sendgrid.events(body))

    async def mailgun(self, request: Request) -> Batch:
        """A Mailgun event whose token was never seen before."""
        assert self.config.mailgun_key is not None
        signed = mailgun.parse(await _body(request))
        mailgun.verify(self.config.mailgun_key, signed, now=self.clock())
        batch = mailgun.events(signed)
        key = signed.token_key()
        try:
            first = await self.queue.remember(key, seconds=mailgun.TOKEN_MEMORY_SECONDS)
        except QueueUnavailable as e:
            raise Unavailable(f"the queue is unavailable ({e})") from e
        if not first:
            raise Unauthenticated("token seen before")
        try:
            return await self._enqueue("mailgun", batch)
        except Unavailable:
            # Not queued: Mailgun's retry must not be refused as a replay.
            try:
                await self.queue.forget(key)
            except QueueUnavailable:
                log.warning("webhook.token_kept", provider="mailgun")
            raise

    async def postmark(self, request: Request) -> Batch:
        """A Postmark record, once its basic credentials are right."""
        assert self.config.postmark_credentials is not None
        user, password = self.config.postmark_credentials
        if not postmark.authorized(
            request.headers.get("authorization"), user=user, password=password
        ):
            raise Unauthenticated("wrong credentials")
        return await self._enqueue("postmark", postmark.events(await _body(request)))

    async def _enqueue(self, provider: str, batch: Batch) -> Batch:
        if batch.events:
            try:
                await self.queue.enqueue_feedback(batch.report(), job_id=batch.job_id(provider))
            except QueueUnavailable as e:
                raise Unavailable(f"the queue is unavailable ({e})") from e
        return batch

    async def _signing_key(self, url: httpx.URL) -> rsa.RSAPublicKey:
        """The key of the SNS signing certificate at `url` (fetched once, then kept)."""
        certificate = self._certificates.get(str(url))
        if certificate is None:
            certificate = ses.load_certificate(await self._fetch_certificate(url))
            if len(self._certificates) >= CERTIFICATE_CACHE_SIZE:
                self._certificates.pop(next(iter(self._certificates)))
            self._certificates[str(url)] = certificate
        return ses.public_key(certificate, now=datetime.now(UTC))

    async def _fetch_certificate(self, url: httpx.URL) -> bytes:
        try:
            async with self.http.stream("GET", url) as response:
                if response.status_code >= 500:
                    raise Unavailable("the signing certificate is unavailable")
                if response.status_code != 200:
                    raise Unauthenticated("no signing certificate at SigningCertURL")
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > ses.MAX_CERTIFICATE_BYTES:
                        raise Unauthenticated("the signing certificate is too large")
                return bytes(data)
        except httpx.HTTPError as e:
            raise Unavailable(f"the signing certificate is unavailable ({type(e).__name__})") from e

    async def _confirm(self, url: str) -> None:
        """Confirm an SNS subscription by GETting its SubscribeURL."""
        checked = ses.sns_url(url, self.config.cert_host_pattern, field="SubscribeURL")
        try:
            response = await self.http.get(checked)
        except httpx.HTTPError as e:
            raise Unavailable(f"the subscription was not confirmed ({type(e).__name__})") from e
        if not response.is_success:
            raise Unavailable("the subscription was not confirmed")


@asynccontextmanager
async def running(config: WebhookConfig, queue: FeedbackQueue) -> AsyncIterator[Webhooks]:
    """The webhooks' state for the app's lifespan. Certificates are fetched trusting the
    system's CA store (or SSL_CERT_FILE / SSL_CERT_DIR when set); proxies as the
    environment says."""
    async with httpx.AsyncClient(
        verify=ssl.create_default_context(),
        trust_env=True,
        timeout=HTTP_TIMEOUT,
        follow_redirects=False,
    ) as http:
        yield Webhooks(config, queue, http)


async def _body(request: Request) -> bytes:
    """The request body; TooLarge past MAX_BODY bytes (read no further)."""
    return await http.read_body(request, MAX_BODY)


Handler = Callable[[Webhooks, Request], Awaitable[Batch | Response]]


async def _serve(request: Request, provider: str, enabled: bool, handler: Handler) -> Response:
    """Run a provider's handler and answer for it: counts, or the refusal."""
    if not enabled:
        return PlainTextResponse("Not Found", status_code=404)
    webhooks: Webhooks = request.state.webhooks
    try:
        outcome = await handler(webhooks, request)
    except Refused as e:
        level = log.error if isinstance(e, Unavailable) else log.warning
        level("webhook.refused", provider=provider, status=e.status, reason=e.reason)
        if provider == "postmark" and isinstance(e, Unauthenticated):
            e.headers["WWW-Authenticate"] = 'Basic realm="webhooks", charset="UTF-8"'
        return http.answer(e)
    if isinstance(outcome, Response):
        return outcome
    counts = outcome.counts()
    log.info("webhook.accepted", provider=provider, **counts)
    return JSONResponse(counts)


async def ses_webhook(request: Request) -> Response:
    """POST /webhooks/ses: Amazon SNS messages carrying SES notifications."""
    webhooks: Webhooks = request.state.webhooks
    return await _serve(request, "ses", bool(webhooks.config.topic_arns), Webhooks.ses)


async def sendgrid_webhook(request: Request) -> Response:
    """POST /webhooks/sendgrid: SendGrid's signed Event Webhook."""
    webhooks: Webhooks = request.state.webhooks
    enabled = webhooks.config.sendgrid_key is not None
    return await _serve(request, "sendgrid", enabled, Webhooks.sendgrid)


async def mailgun_webhook(request: Request) -> Response:
    """POST /webhooks/mailgun: Mailgun's signed webhooks."""
    webhooks: Webhooks = request.state.webhooks
    enabled = webhooks.config.mailgun_key is not None
    return await _serve(request, "mailgun", enabled, Webhooks.mailgun)


async def postmark_webhook(request: Request) -> Response:
    """POST /webhooks/postmark: Postmark's webhooks, behind HTTP basic authentication."""
    webhooks: Webhooks = request.state.webhooks
    enabled = webhooks.config.postmark_credentials is not None
    return await _serve(request, "postmark", enabled, Webhooks.postmark)


ROUTES = [
    Route("/webhooks/ses", ses_webhook, methods=["POST"]),
    Route("/webhooks/sendgrid", sendgrid_webhook, methods=["POST"]),
    Route("/webhooks/mailgun", mailgun_webhook, methods=["POST"]),
    Route("/webhooks/postmark", postmark_webhook, methods=["POST"]),
]
