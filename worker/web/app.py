"""The web app: Starlette, served by uvicorn (`survey-worker web`).

    GET  /unsubscribe/{token}   the confirmation page; POST records the opt-out
                                (`unsubscribe`)
    GET  /healthz               whether the app can record opt-outs now, and if not, why
    POST /webhooks/{provider}   bounces, complaints and deliveries from SES, SendGrid,
                                Mailgun and Postmark (`webhooks.providers`)
    POST /webhooks/completion   the survey platform's signed word that invitations were
                                answered (`webhooks.completion`)
    /v1/...                     the client API (`api`)
    GET  /metrics, /ops         operating the worker (`ops`)

No path redirects (a trailing slash is a 404, not a redirect built from the Host header).
Every response forbids caching, framing and referrers (the token is in the URL). Logs
never hold a token or an address: uvicorn's access log, which prints paths, is off, and
the app logs the route's name instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker import metrics
from worker.settings import Settings
from worker.web import api as client_api
from worker.web import pages, unsubscribe
from worker.web.backends import Backends, WebContext
from worker.web.ops.app import Ops
from worker.web.webhooks import completion, providers

log = structlog.get_logger("worker.web")


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
    renderer = pages.Renderer(privacy_contact=settings.privacy_contact)
    keys = settings.signing_keys()
    hash_key, completion_key = settings.hash_key(), settings.completion_webhook_key()
    webhook_config = providers.WebhookConfig.from_settings(settings)
    counts = metrics.WebMetrics()
    ops = Ops(settings, counts)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[dict[str, object]]:
        backends = Backends(database_url, redis_url, pool_mode=settings.database_pool_mode)
        await backends.open()
        try:
            async with (
                providers.running(webhook_config, backends) as webhooks,
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
            Route("/unsubscribe/{token}", unsubscribe.unsubscribe_page, methods=["GET"]),
            Route("/unsubscribe/{token}", unsubscribe.unsubscribe, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/webhooks/completion", completion.completion_webhook, methods=["POST"]),
            *providers.ROUTES,
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
