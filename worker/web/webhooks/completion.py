"""`POST /webhooks/completion`: the survey platform's signed word (Standard Webhooks) that
invitations were answered; `worker.completion` records it."""

from __future__ import annotations

import time

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from worker import completion
from worker.db import DB_ERRORS
from worker.errors import Refused, Unavailable
from worker.web import http
from worker.web.backends import WebContext

log = structlog.get_logger("worker.web")


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
        body = await http.read_body(request, completion.MAX_BODY)
        completion.verify(
            web.completion_key,
            webhook_id=headers.get("webhook-id"),
            timestamp=headers.get("webhook-timestamp"),
            signatures=headers.get("webhook-signature"),
            body=body,
            now=time.time(),
        )
        refs = completion.parse_refs(body)
    except Refused as e:
        log.warning("completion.refused", status=e.status, reason=e.reason)
        return http.answer(e)
    try:
        async with web.backends.connection() as conn:
            report = await completion.complete(
                conn, refs, hash_key=web.hash_key, webhook_id=headers["webhook-id"]
            )
    except DB_ERRORS as e:
        # Nothing was recorded (webhook id included): the platform's retry is not a replay.
        log.error("completion.unavailable", error=type(e).__name__)
        return http.answer(
            Unavailable("the database is unavailable; deliver again later", {"Retry-After": "60"})
        )
    completion.log_completed(report, source="webhook")
    return JSONResponse(report.as_json())
