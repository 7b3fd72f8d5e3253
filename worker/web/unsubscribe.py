"""The unsubscribe pages: the link in every message, and RFC 8058 one-click.

    GET  /unsubscribe/{token}   a confirmation page; changes nothing (mail scanners
                                prefetch links)
    POST /unsubscribe/{token}   records the opt-out: the page's button, or RFC 8058 one-click

A POST never redirects and sets no cookie, and repeating it is harmless. An unusable token
gets the same 400 page whatever is wrong with it. When Postgres is unavailable the click is
queued as the `record_opt_out` job (202); when Redis is unavailable too, the person is asked
to try again (503).
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
from email.message import Message as MimePart
from urllib.parse import parse_qs

import structlog
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from worker import addresses, optouts, tokens
from worker.db import DB_ERRORS
from worker.errors import QueueUnavailable, TooLarge
from worker.web import http, pages
from worker.web.backends import WebContext

log = structlog.get_logger("worker.web")

# A one-click body is 26 bytes, a multipart one a few hundred: anything much larger is not
# one, and is not read into memory.
MAX_BODY = 4096


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


def _page(web: WebContext, page: pages.Page) -> HTMLResponse:
    return HTMLResponse(web.renderer.render(page), status_code=page.status)


async def unsubscribe_page(request: Request) -> Response:
    """GET: the confirmation page, naming the list the person is about to leave."""
    web: WebContext = request.state.web
    claims = tokens.verify(web.keys, request.path_params["token"])
    if claims is None:
        log.info("unsubscribe.invalid_token", method="GET")
        return _page(web, pages.invalid(web.renderer.privacy_contact))
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
                return _page(web, pages.invalid(web.renderer.privacy_contact))
    return _page(web, pages.confirm(claims.locale, marketing=marketing, client_name=client_name))


async def unsubscribe(request: Request) -> Response:
    """POST: record the opt-out (the page's button, or an RFC 8058 one-click request)."""
    web: WebContext = request.state.web
    token = request.path_params["token"]
    claims = tokens.verify(web.keys, token)
    if claims is None:
        log.info("unsubscribe.invalid_token", method="POST")
        return _page(web, pages.invalid(web.renderer.privacy_contact))
    try:
        body = await http.read_body(request, MAX_BODY)
    except TooLarge:
        body = b""  # not a one-click body, nor read
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
        return _page(web, pages.invalid(web.renderer.privacy_contact))
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
    # Not in a Redis that a restart would empty: accept the click nowhere but Postgres.
    why = "redis has no append-only file"
    try:
        queued = await web.backends.queue_opt_out(claims, token, source, job_id=job_id)
    except QueueUnavailable as e:
        queued, why = False, str(e)
    if not queued:
        log.error("opt_out.unavailable", recipient=recipient, source=source, error=error, queue=why)
        return _page(web, pages.retry(claims.locale))
    log.warning("opt_out.queued", recipient=recipient, source=source, error=error)
    return _page(
        web, pages.pending(claims.locale, marketing=claims.client_id is None, client_name=None)
    )
