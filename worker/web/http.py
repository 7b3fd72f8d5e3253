"""What every route of the web app shares about HTTP: the one body reader (within a
limit), the one "unavailable" answer, and the answer to a refusal (`errors.Refused`)."""

from __future__ import annotations

import asyncpg
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import Message, Receive

from worker.errors import Refused, TooLarge, Unavailable

log = structlog.get_logger("worker.web")

TOO_LARGE = "the body is too large"


def limited_request(request: Request, limit: int, *, too_large: str = TOO_LARGE) -> Request:
    """The request, refusing (TooLarge, `too_large` its reason) a declared or actual body
    over `limit` bytes: nothing past the limit is read. Read it whole with `read_body`, or
    as a form."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(too_large)
    seen = 0

    async def receive() -> Message:
        nonlocal seen
        message = await request.receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise TooLarge(too_large)
        return message

    limited: Receive = receive
    return Request(request.scope, limited)


async def read_body(request: Request, limit: int, *, too_large: str = TOO_LARGE) -> bytes:
    """The request body; TooLarge past `limit` bytes (read no further)."""
    return await limited_request(request, limit, too_large=too_large).body()


def unavailable(error: BaseException, *, face: str, lacks_grant: str) -> Unavailable:
    """The refusal of a request that Postgres cannot serve now: 503, try again in 5 s.

    A missing grant is a deployment mistake, not the caller's: it is logged as an error
    (`<face>.permission_denied`) and answered with `lacks_grant`; anything else is the
    database being down (`<face>.database_unavailable`).
    """
    if isinstance(error, asyncpg.InsufficientPrivilegeError):
        log.error(f"{face}.permission_denied", error=str(error))
        reason = lacks_grant
    else:
        log.warning(f"{face}.database_unavailable", error=type(error).__name__)
        reason = "the database is unavailable; try again shortly"
    return Unavailable(reason, {"Retry-After": "5"})


def answer(refused: Refused) -> JSONResponse:
    """A refusal as the webhooks and the API answer it: `{"error": reason}`."""
    return JSONResponse(
        {"error": refused.reason}, status_code=refused.status, headers=refused.headers
    )


def answer_text(refused: Refused) -> PlainTextResponse:
    """A refusal as a page for people answers it (`/ops`): the reason, one line of text."""
    return PlainTextResponse(
        refused.reason + "\n", status_code=refused.status, headers=refused.headers
    )
