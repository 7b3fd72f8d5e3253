"""`POST /webhooks/completion`: the survey platform's signed word (Standard Webhooks) that
invitations were answered; `worker.completion` records it."""

from __future__ import annotations

import time

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from worker import completion
from worker.db import DB_ERRORS
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
