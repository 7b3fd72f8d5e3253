"""The unsubscribe web app: Starlette, served by uvicorn (`survey-worker web`).

    GET  /unsubscribe/{token}   a confirmation page; changes nothing (mail scanners
                                prefetch links)
    POST /unsubscribe/{token}   records the opt-out: the page's button, or RFC 8058 one-click
    GET  /healthz               whether the app can record opt-outs now, and if not, why
    POST /webhooks/{provider}   bounces, complaints and deliveries from SES, SendGrid,
                                Mailgun and Postmark (worker/provider_webhooks/)
    POST /webhooks/completion   the survey platform's signed word that invitations were
                                answered (worker/completion.py)

A POST never redirects and sets no cookie, and repeating it is harmless; no path redirects
(a trailing slash is a 404, not a redirect built from the Host header). An unusable token
gets the same 400 page whatever is wrong with it. When Postgres is unavailable the click is
queued as the `record_opt_out` job (202); when Redis is unavailable too, the person is asked
to try again (503). Every response forbids caching, framing and referrers (the token is in
the URL). Logs never hold a token or an address: uvicorn's access log, which prints paths,
is off, and the app logs the route's name instead.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.message import Message as MimePart
from typing import Any
from urllib.parse import parse_qs

import asyncpg
import structlog
import uvicorn
from arq.connections import ArqRedis
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker import (
    addresses,
    completion,
    db,
    held_optouts,
    metrics,
    optouts,
    pages,
    provider_webhooks,
    queue,
    tokens,
)
from worker import api as client_api
from worker.db import DB_ERRORS
from worker.errors import QueueUnavailable, UnusableUrl
from worker.ops.app import Ops
from worker.settings import Settings, postgres_url_problem

log = structlog.get_logger("worker.web")

CONNECT_TIMEOUT = 3.0
QUERY_TIMEOUT = 5.0
QUEUE_TIMEOUT = 3.0
POOL_SIZE = 5
# A one-click body is 26 bytes, a multipart one a few hundred: anything much larger is not
# one, and is not read into memory.
MAX_BODY = 4096


class Backends:
    """Postgres and Redis as the app reaches them.

    Nothing connects at start-up, so the app starts and answers while either is down;
    connections are made on first use and made again once a server is back. A URL that
    cannot work counts as a server that is down.
    """

    def __init__(self, database_url: str, redis_url: str) -> None:
        self._database_url = database_url
        self._database_url_problem = postgres_url_problem(database_url)
        self._pool: asyncpg.Pool | None = None
        # A click waits for Redis: it fails at once rather than retry.
        self._queue = queue.LazyQueue(redis_url)

    async def open(self) -> None:
        """Create the connection pool (min_size=0: it connects on the first query)."""
        if self._database_url_problem:
            return
        self._pool = await asyncpg.create_pool(
            self._database_url,
            min_size=0,
            max_size=POOL_SIZE,
            init=db.init_connection,
            timeout=CONNECT_TIMEOUT,
            command_timeout=QUERY_TIMEOUT,
        )

    async def close(self) -> None:
        """Close whatever was opened."""
        await self._queue.close()
        if self._pool is not None:
            await self._pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy[Any]]:
        """A pooled connection; raises one of `DB_ERRORS` when Postgres is unavailable."""
        if self._pool is None:
            raise UnusableUrl(f"DATABASE_URL: {self._database_url_problem or 'not opened'}")
        async with self._pool.acquire(timeout=CONNECT_TIMEOUT) as conn:
            yield conn

    @asynccontextmanager
    async def _redis(self) -> AsyncIterator[ArqRedis]:
        """Redis for one operation of at most QUEUE_TIMEOUT; raises `QueueUnavailable`
        when it cannot answer."""
        try:
            async with asyncio.timeout(QUEUE_TIMEOUT):
                yield await self._queue.get()
        except queue.ERRORS as e:
            raise QueueUnavailable(type(e).__name__) from e

    async def enqueue_opt_out(self, token: str, source: str, *, job_id: str) -> None:
        """Leave the opt-out to the `record_opt_out` job (a no-op if one with `job_id` is
        queued); raises `QueueUnavailable` when Redis cannot take it."""
        async with self._redis() as redis:
            await queue.enqueue_opt_out(redis, token, source, job_id=job_id)

    async def hold_opt_out(self, claims: tokens.TokenClaims) -> bool:
        """Hold a click in Redis where the send-time check reads it; False (nothing held)
        when that Redis would not keep it across a restart. Raises `QueueUnavailable` when
        Redis cannot answer."""
        async with self._redis() as redis:
            if not await held_optouts.durable(redis):
                return False
            await held_optouts.hold(redis, claims)
        return True

    async def enqueue_feedback(self, report: dict[str, Any], *, job_id: str) -> None:
        """Leave a provider's feedback to the `record_feedback` job (a no-op while one with
        `job_id` is queued); raises `QueueUnavailable` when Redis cannot take it."""
        async with self._redis() as redis:
            await queue.enqueue_feedback(redis, report, job_id=job_id)

    async def remember(self, key: str, *, seconds: int) -> bool:
        """Set `key` in Redis for `seconds` unless it is set (SET NX EX); whether it was
        not. Raises `QueueUnavailable` when Redis cannot answer."""
        async with self._redis() as redis:
            return bool(await redis.set(key, b"1", nx=True, ex=seconds))

    async def forget(self, key: str) -> None:
        """Delete `key` from Redis; raises `QueueUnavailable` when Redis cannot answer."""
        async with self._redis() as redis:
            await redis.delete(key)

    async def database_problem(self) -> str | None:
        """None when Postgres answers now, else why not."""
        try:
            async with self.connection() as conn:
                await db.ping(conn)
        except DB_ERRORS as e:
            return _reason(e)
        return None

    async def queue_problem(self) -> str | None:
        """None when Redis answers now, else why not."""
        try:
            async with self._redis() as redis:
                await redis.ping()
        except QueueUnavailable as e:
            return _reason(e.__cause__ or e)
        return None


def _reason(error: BaseException) -> str:
    # The error's class says enough to an operator; its text may name hosts and users,
    # which a public endpoint does not show.
    return str(error) if isinstance(error, UnusableUrl) else type(error).__name__


@dataclass(frozen=True)
class WebContext:
    """What the handlers need, carried in Starlette's lifespan state."""

    keys: list[bytes]
    renderer: pages.Renderer
    backends: Backends
    hash_key: bytes = b""  # ADDRESS_HASH_KEY: keys the survey references
    completion_key: bytes | None = None  # COMPLETION_WEBHOOK_SECRET's key; None: 404


def is_one_click(content_type: str, body: bytes) -> bool:
    """Whether a POST body is RFC 8058's `List-Unsubscribe=One-Click`.

    RFC 8058 section 3.1: mail clients send it as application/x-www-form-urlencoded or,
    as the RFC says they SHOULD, as multipart/form-data; both are understood.
    """
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        fields = parse_qs(body.decode("latin-1"), keep_blank_values=True)
        return fields.get("List-Unsubscribe") == ["One-Click"]
    if media_type != "multipart/form-data":
        return False
    # A multipart/form-data body is a MIME multipart entity (RFC 7578): the standard
    # library's MIME parser reads it once given the Content-Type with its boundary.
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    entity = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not entity.is_multipart():
        return False
    for part in entity.get_payload():
        if not isinstance(part, MimePart):
            continue
        if part.get_param("name", header="content-disposition") != "List-Unsubscribe":
            continue
        value = part.get_payload(decode=True)
        if isinstance(value, bytes) and value.strip() == b"One-Click":
            return True
    return False


async def _small_body(request: Request) -> bytes:
    """The request body if it is at most MAX_BODY bytes, else nothing."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return b""
        chunks.append(chunk)
    return b"".join(chunks)


def _page(web: WebContext, page: pages.Page) -> HTMLResponse:
    return HTMLResponse(web.renderer.render(page), status_code=page.status)


async def unsubscribe_page(request: Request) -> Response:
    """GET: the confirmation page, naming the list the person is about to leave."""
    web: WebContext = request.state.web
    claims = tokens.verify(web.keys, request.path_params["token"])
    if claims is None:
        log.info("unsubscribe.invalid_token", method="GET")
        return _page(web, pages.invalid())
    marketing = claims.client_id is None
    client_name = None
    if not marketing:
        try:
            async with web.backends.connection() as conn:
                client_name = await optouts.client_name(conn, claims)
        except DB_ERRORS as e:
            # The page can still be shown, with a generic name; the POST copes on its own.
            log.warning("web.database_unavailable", error=type(e).__name__)
        else:
            if client_name is None:
                log.info("unsubscribe.unknown_client", method="GET")
                return _page(web, pages.invalid())
    return _page(web, pages.confirm(claims.locale, marketing=marketing, client_name=client_name))


async def unsubscribe(request: Request) -> Response:
    """POST: record the opt-out (the page's button, or an RFC 8058 one-click request)."""
    web: WebContext = request.state.web
    token = request.path_params["token"]
    claims = tokens.verify(web.keys, token)
    if claims is None:
        log.info("unsubscribe.invalid_token", method="POST")
        return _page(web, pages.invalid())
    body = await _small_body(request)
    source = "one-click" if is_one_click(request.headers.get("content-type", ""), body) else "web"
    recipient = addresses.recipient_id(claims.email_hash)
    marketing = claims.client_id is None
    try:
        async with web.backends.connection() as conn:
            client_name = None if marketing else await optouts.client_name(conn, claims)
            scopes = None
            if marketing or client_name is not None:
                scopes = await optouts.add_from_token(conn, claims, source=source)
    except DB_ERRORS as e:
        return await _queue_opt_out(web, token, claims, source, error=type(e).__name__)
    if scopes is None:
        log.info("unsubscribe.unknown_client", method="POST")
        return _page(web, pages.invalid())
    log.info(
        "opt_out.recorded", scope=optouts.scopes_label(scopes), recipient=recipient, source=source
    )
    return _page(web, pages.done(claims.locale, marketing=marketing, client_name=client_name))


async def _queue_opt_out(
    web: WebContext, token: str, claims: tokens.TokenClaims, source: str, *, error: str
) -> Response:
    """Postgres is unavailable: leave the opt-out to the `record_opt_out` job."""
    recipient = addresses.recipient_id(claims.email_hash)
    # One job per link however often it is clicked; the id must not reveal the token.
    job_id = "record_opt_out:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    try:
        held = await web.backends.hold_opt_out(claims)
        if held:
            await web.backends.enqueue_opt_out(token, source, job_id=job_id)
    except QueueUnavailable as e:
        log.error(
            "opt_out.unavailable", recipient=recipient, source=source, error=error, queue=str(e)
        )
        return _page(web, pages.retry(claims.locale))
    if not held:
        # A restart of this Redis would forget the click: accept it nowhere but Postgres.
        log.error(
            "opt_out.unavailable",
            recipient=recipient,
            source=source,
            error=error,
            queue="redis has no append-only file",
        )
        return _page(web, pages.retry(claims.locale))
    log.warning("opt_out.queued", recipient=recipient, source=source, error=error)
    return _page(
        web, pages.pending(claims.locale, marketing=claims.client_id is None, client_name=None)
    )


async def completion_webhook(request: Request) -> Response:
    """POST: the survey platform says invitations were answered (Standard Webhooks).

    404 while COMPLETION_WEBHOOK_SECRET is unset; 413, 401 or 400 (a JSON reason) for a
    request refused as a whole, nothing recorded; 503 while Postgres is unavailable, so the
    platform delivers it again. Otherwise 200 with the counts and the unknown references.
    """
    web: WebContext = request.state.web
    if web.completion_key is None:
        return JSONResponse({"error": "not found"}, status_code=404)
    headers = request.headers
    try:
        body = await _capped_body(request, completion.MAX_BODY)
        completion.verify(
            web.completion_key,
            webhook_id=headers.get("webhook-id"),
            timestamp=headers.get("webhook-timestamp"),
            signatures=headers.get("webhook-signature"),
            body=body,
            now=time.time(),
        )
        refs = completion.parse_refs(body)
    except completion.CompletionRefused as e:
        log.warning("completion.refused", status=e.status, reason=e.reason)
        return JSONResponse({"error": e.reason}, status_code=e.status)
    try:
        async with web.backends.connection() as conn:
            report = await completion.complete(
                conn, refs, hash_key=web.hash_key, webhook_id=headers["webhook-id"]
            )
    except DB_ERRORS as e:
        # Nothing was recorded (webhook id included): the platform's retry is not a replay.
        log.error("completion.unavailable", error=type(e).__name__)
        return JSONResponse(
            {"error": "the database is unavailable; deliver again later"},
            status_code=503,
            headers={"Retry-After": "60"},
        )
    completion.log_completed(report, source="webhook")
    return JSONResponse(report.as_json())


async def _capped_body(request: Request, limit: int) -> bytes:
    """The request body; completion.TooLarge past `limit` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise completion.TooLarge("the body is too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise completion.TooLarge("the body is too large")
        chunks.append(chunk)
    return b"".join(chunks)


async def healthz(request: Request) -> Response:
    """200 while the app can record opt-outs (directly, or through the queue), else 503;
    `reasons` says what is wrong with whichever is unavailable."""
    web: WebContext = request.state.web
    problems = await asyncio.gather(web.backends.database_problem(), web.backends.queue_problem())
    reasons = {name: p for name, p in zip(("database", "queue"), problems, strict=True) if p}
    database, job_queue = "database" not in reasons, "queue" not in reasons
    status = "ok" if database and job_queue else "degraded" if database or job_queue else "down"
    return JSONResponse(
        {"status": status, "database": database, "queue": job_queue, "reasons": reasons},
        status_code=200 if database or job_queue else 503,
    )


class PrivateResponses:
    """ASGI middleware: privacy and security headers on every response, one log line each.

    The log line names the route's handler, never the path: the path holds the token.
    """

    def __init__(self, app: ASGIApp, *, content_security_policy: str) -> None:
        self.app = app
        self.headers = {
            "Content-Security-Policy": content_security_policy,
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                # A page with a style sheet of its own (/ops) brings the policy for it.
                own_policy = headers.get("Content-Security-Policy")
                headers.update(self.headers)
                if own_policy:
                    headers["Content-Security-Policy"] = own_policy
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            endpoint = scope.get("endpoint")
            log.info(
                "http.request",
                method=scope["method"],
                route=getattr(endpoint, "__name__", "-"),
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 1),
            )


def create_app(
    settings: Settings,
    database_url: str,
    redis_url: str,
) -> Starlette:
    """The unsubscribe app (and the provider webhooks, and the client API at /v1) for these
    settings, Postgres and Redis; ConfigError when a webhook setting is unusable."""
    renderer = pages.Renderer()
    keys = settings.signing_keys()
    hash_key, completion_key = settings.hash_key(), settings.completion_webhook_key()
    webhook_config = provider_webhooks.WebhookConfig.from_settings(settings)
    counts = metrics.WebMetrics()
    ops = Ops(settings, counts)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[dict[str, object]]:
        backends = Backends(database_url, redis_url)
        await backends.open()
        try:
            async with (
                provider_webhooks.running(webhook_config, backends) as webhooks,
                client_api.running(settings, database_url=database_url, redis_url=redis_url) as v1,
            ):
                yield {
                    "api": v1,
                    "web": WebContext(
                        keys=keys,
                        renderer=renderer,
                        backends=backends,
                        hash_key=hash_key,
                        completion_key=completion_key,
                    ),
                    "webhooks": webhooks,
                }
        finally:
            await backends.close()

    app = Starlette(
        routes=[
            Route("/unsubscribe/{token}", unsubscribe_page, methods=["GET"]),
            Route("/unsubscribe/{token}", unsubscribe, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/webhooks/completion", completion_webhook, methods=["POST"]),
            *provider_webhooks.ROUTES,
            Mount("/v1", app=client_api.create_app()),
            *ops.routes(),
        ],
        lifespan=lifespan,
    )
    # Starlette would answer a trailing slash with a redirect to a URL built from the Host
    # header: an open redirect on a link in every message. Unknown paths are 404s.
    app.router.redirect_slashes = False
    app.add_middleware(metrics.CountRequests, counts=counts)
    app.add_middleware(PrivateResponses, content_security_policy=renderer.content_security_policy)
    return app


def server(app: ASGIApp, *, host: str, port: int) -> uvicorn.Server:
    """A uvicorn server for `app` (port 0: any free port), logging through our own logs."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        ws="none",
        access_log=False,
        log_config=None,
        server_header=False,
    )
    return uvicorn.Server(config)


def serve(settings: Settings, *, database_url: str, redis_url: str, host: str, port: int) -> None:
    """Run the app until SIGINT or SIGTERM."""
    log.info("web.starting", host=host, port=port)
    server(create_app(settings, database_url, redis_url), host=host, port=port).run()
