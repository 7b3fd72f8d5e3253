"""The client API (FastAPI, mounted at /v1 on the web app).

    POST /v1/campaigns                 launch: JSON recipients or a CSV upload
    GET  /v1/campaigns/{id}            what `status --json` prints
    POST /v1/campaigns/{id}/pause      | resume | cancel
    POST /v1/campaigns/{id}/retry      what `retry --json` prints
    GET  /v1/opt-outs?after=&limit=    the client's opt-out feed
    GET  /v1/openapi.json              this API, generated from the code

Every request is authenticated (`Authorization: Bearer KEY`) and rate-limited per key
before its body is read; it sees only the key's client, and another client's campaign is a
404. Errors are `{"error": "..."}`: 400 bad input, 401 no valid key, 404, 413 a JSON body
over API_JSON_MAX_BYTES or an upload over API_MAX_UPLOAD_BYTES, 429 over API_RATE_LIMIT,
503 when Postgres is unavailable; bad input is never a 500.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Annotated, Any, BinaryIO

import asyncpg
import orjson
import structlog
from arq.connections import ArqRedis
from fastapi import Depends, FastAPI, Header, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from worker import apikeys, campaigns, db, durations, feed, queue, relay_config, sending_domain
from worker.apikeys import Caller
from worker.errors import (
    CsvProblem,
    LaunchConflict,
    LaunchProblem,
    Malformed,
    NotFound,
    NoValidRecipient,
    Refused,
    RetryRefused,
    ScheduleProblem,
    Unauthenticated,
    UnusableUrl,
    api_names,
)
from worker.render import TemplateStore
from worker.settings import Settings, postgres_url_problem
from worker.states import Action
from worker.web import http
from worker.web.api.models import (
    IDEMPOTENCY_KEY,
    CampaignFields,
    CampaignJson,
    ControlAnswer,
    ErrorAnswer,
    FeedPage,
    LaunchAnswer,
    RetryAnswer,
    RetryRequest,
    StatusAnswer,
)
from worker.web.api.uploads import (
    JsonRecipients,
    read_upload,
    recipients_csv,
)
from worker.web.backends import open_pool

log = structlog.get_logger("worker.api")

CONNECT_TIMEOUT = 3.0
QUERY_TIMEOUT = 30.0
QUEUE_TIMEOUT = 3.0
RATE_KEY = "survey-worker:api-rate:"
_MAX_ID = 2**63 - 1
# The most a retry's body (a few reason names) may take.
RETRY_BODY_MAX = 4096


def unauthorized() -> Unauthenticated:
    return Unauthenticated(
        "a valid API key is required: Authorization: Bearer KEY",
        {"WWW-Authenticate": 'Bearer realm="survey-worker"'},
    )


def no_campaign() -> Refused:
    # The same answer for a campaign that does not exist and another client's.
    return Refused(404, "no such campaign")


@dataclass(frozen=True)
class ApiContext:
    """What the handlers need, opened and closed with the web app (its lifespan state)."""

    settings: Settings
    database_url: str
    pool: asyncpg.Pool | None
    jobs: queue.LazyQueue
    templates: TemplateStore

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy[Any]]:
        """A pooled connection; raises one of `db.DB_ERRORS` when Postgres is unavailable."""
        if self.pool is None:
            raise UnusableUrl("API_DATABASE_URL: " + str(postgres_url_problem(self.database_url)))
        async with self.pool.acquire(timeout=CONNECT_TIMEOUT) as conn:
            yield conn

    async def queue_if_up(self) -> ArqRedis | None:
        """Redis, or None when it does not answer in time (what reads it then says
        "unknown" instead of failing)."""
        try:
            async with asyncio.timeout(QUEUE_TIMEOUT):
                return await self.jobs.get()
        except (*queue.ERRORS, UnusableUrl, TimeoutError):
            return None

    async def within_rate(self, caller: Caller) -> float | None:
        """None when the key may make this request; else seconds until it may again.
        Counted per key and minute in Redis; when Redis is unavailable, requests pass."""
        limit = self.settings.api_rate_limit
        if not limit:
            return None
        now = time.time()
        minute = int(now // 60)
        key = f"{RATE_KEY}{caller.key_id}:{minute}"
        try:
            async with asyncio.timeout(QUEUE_TIMEOUT):
                redis = await self.jobs.get()
                async with redis.pipeline(transaction=True) as pipe:
                    pipe.incr(key)
                    pipe.expire(key, 120)
                    count, _ = await pipe.execute()
        except queue.ERRORS as e:
            log.warning("api.rate_unchecked", error=type(e).__name__)
            return None
        return None if int(count) <= limit else (minute + 1) * 60 - now


@asynccontextmanager
async def running(
    settings: Settings, *, database_url: str, redis_url: str
) -> AsyncIterator[ApiContext]:
    """The API's connections for the web app's lifetime; nothing connects before use, so
    the app starts while Postgres or Redis is down."""
    url = settings.api_database_url or database_url
    pool = await open_pool(url, query_timeout=QUERY_TIMEOUT, pool_mode=settings.database_pool_mode)
    jobs = queue.LazyQueue(redis_url)
    try:
        yield ApiContext(
            settings=settings,
            database_url=url,
            pool=pool,
            jobs=jobs,
            templates=TemplateStore(settings.templates_dir),
        )
    finally:
        await jobs.close()
        if pool is not None:
            await pool.close()


def _api(request: Request) -> ApiContext:
    api: ApiContext = request.state.api
    return api


bearer = HTTPBearer(
    auto_error=False, description="A key made with `survey-worker client key create`."
)


async def authenticated(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Caller:
    """The caller of a request with a valid key, within its rate; else 401 or 429."""
    if credentials is None:
        raise unauthorized()
    api = _api(request)
    async with api.connection() as conn:
        caller = await apikeys.authenticate(conn, credentials.credentials)
    if caller is None:
        log.info("api.unauthorized")
        raise unauthorized()
    wait = await api.within_rate(caller)
    if wait is not None:
        log.info("api.rate_limited", client_id=caller.client_id, key_id=caller.key_id)
        raise Refused(
            429,
            f"over {api.settings.api_rate_limit} requests a minute for this key",
            {"Retry-After": str(max(1, int(wait + 0.999)))},
        )
    return caller


Authenticated = Annotated[Caller, Depends(authenticated)]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorAnswer, "description": "Bad input; `error` says what."},
    401: {"model": ErrorAnswer, "description": "No valid API key."},
    429: {"model": ErrorAnswer, "description": "Over the key's rate; see Retry-After."},
    503: {"model": ErrorAnswer, "description": "The database is unavailable; try again."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorAnswer, "description": "No such campaign of this client."}
}


def _first_error(error: ValidationError | RequestValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return f"{where}: {first['msg']}" if where else str(first["msg"])


def _fields(data: dict[str, Any], model: type[CampaignFields]) -> CampaignFields:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise Malformed(_first_error(e)) from e


def _launch_blocking(
    api: ApiContext, request: campaigns.LaunchRequest, stream: BinaryIO
) -> campaigns.LaunchReport:
    """Run `campaigns.launch` on a connection and event loop of its own, in a thread: the
    import parses and checks every line, which would stall the app's other requests."""

    async def go() -> campaigns.LaunchReport:
        conn = await db.connect(
            api.database_url,
            pool_mode=api.settings.database_pool_mode,
            connect_timeout=CONNECT_TIMEOUT,
        )
        try:
            return await campaigns.launch(
                conn,
                request,
                stream,
                templates=api.templates,
                hash_key=api.settings.hash_key(),
                progress=lambda _n: None,
            )
        finally:
            await conn.close()

    return asyncio.run(go())


async def _enqueue(api: ApiContext, campaign_id: int) -> bool:
    """Ask the workers to start the campaign; False (logged) when Redis cannot take it,
    and the reconcile cron starts it instead."""
    try:
        async with asyncio.timeout(QUEUE_TIMEOUT):
            await queue.enqueue_launch(await api.jobs.get(), campaign_id)
    except queue.ERRORS as e:
        log.warning("campaign.enqueue_failed", campaign_id=campaign_id, error=type(e).__name__)
        return False
    return True


CAMPAIGN_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": CampaignJson.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["recipients", "template"],
                    "properties": {
                        "recipients": {
                            "type": "string",
                            "format": "binary",
                            "description": "The recipients CSV, as for `launch`.",
                        },
                        **CampaignFields.model_json_schema()["properties"],
                    },
                }
            },
        },
    }
}


@dataclass
class CampaignInput:
    """A launch request's fields, its recipients as a CSV stream, and (JSON) where each
    recipient is in that CSV."""

    fields: CampaignFields
    stream: BinaryIO
    mapping: JsonRecipients | None
    name: str


def _json_input(body: bytes) -> CampaignInput:
    """Parse and check a JSON launch, and write its recipients out as the import's CSV.
    Run in a thread: for a body of a few MB this takes a while and about 20 times the
    body's size in memory, which must not stall the unsubscribe pages and /healthz."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise Malformed(f"malformed JSON: {e}") from e
    if not isinstance(data, dict):
        raise Malformed("the body must be a JSON object")
    given = _fields(data, CampaignJson)
    del data
    assert isinstance(given, CampaignJson)
    mapping = recipients_csv(given.recipients)
    # Only the CSV is needed from here on: the parsed recipients are let go.
    fields = CampaignFields.model_validate(given.model_dump(exclude={"recipients"}))
    stream: BinaryIO = mapping.file  # type: ignore[assignment]
    return CampaignInput(fields, stream, mapping, fields.name or "api")


async def _campaign_input(request: Request, settings: Settings) -> CampaignInput:
    """Read and check `POST /v1/campaigns`'s body, JSON (within API_JSON_MAX_BYTES) or
    multipart/form-data (within API_MAX_UPLOAD_BYTES)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type == "application/json":
        limit = settings.api_json_max_bytes
        body = await http.read_body(
            request,
            limit,
            too_large=f"the request body is over {limit} bytes (API_JSON_MAX_BYTES): "
            "send more recipients as a CSV upload",
        )
        return await asyncio.to_thread(_json_input, body)
    if media_type == "multipart/form-data":
        limit = settings.api_max_upload_bytes
        too_large = f"the request body is over {limit} bytes"
        upload = await read_upload(http.limited_request(request, limit, too_large=too_large))
        try:
            fields = _fields(dict(upload.fields), CampaignFields)
        except Refused:
            upload.file.close()
            raise
        name = fields.name or campaigns.name_of_file(upload.filename or "api upload")
        return CampaignInput(fields, upload.file, None, name)
    raise Malformed("Content-Type must be application/json or multipart/form-data")


async def create_campaign(
    request: Request,
    caller: Authenticated,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=IDEMPOTENCY_KEY,
            description="A retry with the same key returns the first campaign.",
        ),
    ] = None,
) -> JSONResponse:
    """Launch a campaign: `launch`'s options and recipients, as JSON or as a CSV upload
    (`multipart/form-data`, field `recipients`); the answer is `launch --json`'s."""
    api = _api(request)
    given = await _campaign_input(request, api.settings)
    checked = await _domain_check(api, caller, given)
    launch = _launch_request(caller, given, idempotency_key)
    report = await _import(api, launch, given)
    if checked is not None and checked["verdict"] == "fail" and not report.existing:
        await _record_override(api, caller, report.campaign_id, checked)
    queued = await _enqueue(api, report.campaign_id)
    rejected = _rejected(report, given.mapping)
    log.info(
        "api.campaign_launched",
        client_id=caller.client_id,
        key_id=caller.key_id,
        campaign_id=report.campaign_id,
        imported=report.imported,
        rejected=len(rejected),
        existing=report.existing,
    )
    answer: dict[str, Any] = {
        "campaign_id": report.campaign_id,
        "imported": report.imported,
        "rejected": rejected,
        "existing": report.existing,
        "queued": queued,
    }
    if checked is not None:
        answer["sending_domain"] = {"verdict": checked["verdict"], "reasons": checked["reasons"]}
    return JSONResponse(answer, status_code=200 if report.existing else 201)


async def _domain_check(
    api: ApiContext, caller: Caller, given: CampaignInput
) -> dict[str, Any] | None:
    """The client's sending-domain check before anything is imported (kept an hour); a
    `fail` is a 422 naming the domain, its policy and the fix unless `allow_unaligned`
    (the recipients' stream is then closed). The check, or None: nothing to check."""
    try:
        async with api.connection() as conn:
            checked = await sending_domain.for_launch(conn, api.settings, caller.client_id)
    except BaseException:
        given.stream.close()
        raise
    blocked = None if checked is None else sending_domain.blocker(checked)
    if blocked is not None and not given.fields.allow_unaligned:
        given.stream.close()
        raise Refused(422, f"{blocked} (or launch with allow_unaligned)")
    return checked


async def _record_override(
    api: ApiContext, caller: Caller, campaign_id: int, checked: dict[str, Any]
) -> None:
    """Note (and log) that the campaign was launched over its client's `fail`."""
    async with api.connection() as conn:
        await sending_domain.record_override(
            conn, campaign_id, checked, key_id=caller.key_id, via="api"
        )


def _launch_request(
    caller: Caller, given: CampaignInput, idempotency_key: str | None
) -> campaigns.LaunchRequest:
    """The launch `given` asks for, for the caller's client; a malformed
    `reminder_interval` is a 400 (and the recipients' stream is closed)."""
    fields = given.fields
    try:
        interval = (
            None if fields.reminder_interval is None else durations.parse(fields.reminder_interval)
        )
    except ValueError as e:
        given.stream.close()
        raise Malformed(f"reminder_interval: {e}") from e
    return campaigns.LaunchRequest(
        client_id=caller.client_id,
        template=fields.template,
        kind=fields.kind,
        survey_url=fields.survey_url,
        name=given.name,
        locale=fields.locale.lower(),
        idempotency_key=idempotency_key,
        reminders=fields.reminders,
        reminder_interval=interval,
        start_at=fields.start_at,
        close_at=fields.close_at,
        window=fields.window,
        per_day=fields.per_day,
    )


async def _import(
    api: ApiContext, launch: campaigns.LaunchRequest, given: CampaignInput
) -> campaigns.LaunchReport:
    """Launch with `given`'s recipients (in a thread), then close their stream. A reused
    Idempotency-Key or a field period that cannot be used is a 422 (naming the field),
    other refusals a 400; a JSON launch's recipients are named by their position in
    `recipients`."""
    stream, mapping = given.stream, given.mapping
    try:
        return await asyncio.to_thread(_launch_blocking, api, launch, stream)
    except (LaunchConflict, ScheduleProblem) as e:
        raise Refused(422, e.api_message()) from e
    except NoValidRecipient as e:
        if mapping is None:
            raise Malformed(e.api_message()) from e
        named = e.naming(lambda line: f"recipient {mapping.position(line)}", "in `recipients`")
        raise Malformed(api_names(named)) from e
    except LaunchProblem as e:
        raise Malformed(e.api_message()) from e
    except CsvProblem as e:
        raise Malformed(str(e)) from e
    finally:
        stream.close()


def _rejected(
    report: campaigns.LaunchReport, mapping: JsonRecipients | None
) -> list[dict[str, int | str]]:
    """The rejected recipients as the answer lists them: by position in a JSON launch's
    `recipients`, by line of an uploaded CSV."""
    return [
        {"recipient": mapping.position(r.line), "reason": api_names(r.reason)}
        if mapping
        else {"line": r.line, "reason": api_names(r.reason)}
        for r in report.rejected
    ]


def _campaign_id(text: str) -> int:
    """A campaign id from the path; anything else is no campaign (404)."""
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= _MAX_ID:
        raise no_campaign()
    return int(text)


async def campaign_status(campaign_id: str, request: Request, caller: Authenticated) -> Any:
    """The campaign's status and counts: what `status --json` prints."""
    number = _campaign_id(campaign_id)
    async with _api(request).connection() as conn:
        if not await apikeys.owns_campaign(conn, caller.client_id, number):
            raise no_campaign()
        try:
            report = await campaigns.status_report(conn, number)
        except NotFound as e:
            raise no_campaign() from e
        report = replace(report, domain_override=await sending_domain.override_of(conn, number))
    context = _api(request)
    report = await campaigns.with_relays(
        report, await context.queue_if_up(), relay_config.relays(context.settings)
    )
    return JSONResponse(report.as_json())


async def _control(
    request: Request, caller: Caller, campaign_id: str, action: Action
) -> JSONResponse:
    number = _campaign_id(campaign_id)
    api = _api(request)
    async with api.connection() as conn:
        if not await apikeys.owns_campaign(conn, caller.client_id, number):
            raise no_campaign()
        try:
            moved, status = await campaigns.control(conn, number, action)
        except NotFound as e:
            raise no_campaign() from e
    if moved:
        log.info(f"campaign.{status}", campaign_id=number, client_id=caller.client_id, via="api")
        if status == "running":
            await _enqueue(api, number)
    return JSONResponse({"campaign_id": number, "status": status, "changed": moved})


async def pause_campaign(campaign_id: str, request: Request, caller: Authenticated) -> Any:
    """Stop sending after the chunk in flight (idempotent)."""
    return await _control(request, caller, campaign_id, "pause")


async def resume_campaign(campaign_id: str, request: Request, caller: Authenticated) -> Any:
    """Continue a paused campaign (idempotent)."""
    return await _control(request, caller, campaign_id, "resume")


async def cancel_campaign(campaign_id: str, request: Request, caller: Authenticated) -> Any:
    """Stop a campaign for good: what was not sent yet is cancelled (idempotent)."""
    return await _control(request, caller, campaign_id, "cancel")


RETRY_BODY = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": RetryRequest.model_json_schema()}},
    }
}


async def _retry_reasons(request: Request) -> tuple[str, ...]:
    """The reasons a retry's optional JSON body names (none: every transient reason); 400
    for a body that is not `{"reasons": [...]}` with transient reasons, 413 past
    RETRY_BODY_MAX bytes."""
    body = await http.read_body(
        request, RETRY_BODY_MAX, too_large=f"the request body is over {RETRY_BODY_MAX} bytes"
    )
    if not body.strip():
        return ()
    try:
        return tuple(RetryRequest.model_validate_json(body).reasons)
    except ValidationError as e:
        raise Malformed(_first_error(e)) from e


async def retry_campaign(campaign_id: str, request: Request, caller: Authenticated) -> Any:
    """Send again the campaign's invitations that failed for a transient reason (or only
    those the body names): what `retry --json` prints. A cancelled campaign is a 409."""
    number = _campaign_id(campaign_id)
    reasons = await _retry_reasons(request)
    api = _api(request)
    async with api.connection() as conn:
        if not await apikeys.owns_campaign(conn, caller.client_id, number):
            raise no_campaign()
        try:
            report = await campaigns.retry(conn, number, reasons)
        except NotFound as e:
            raise no_campaign() from e
        except RetryRefused as e:
            raise Refused(409, str(e)) from e
    if report.requeued:
        log.info(
            "campaign.retry",
            campaign_id=number,
            client_id=caller.client_id,
            requeued=report.requeued,
            by_reason=report.by_reason,
            via="api",
        )
        if report.status == "running":
            await _enqueue(api, number)
    return JSONResponse(report.as_json())


async def opt_out_feed(
    request: Request,
    caller: Authenticated,
    after: Annotated[
        str | None,
        Query(max_length=64, description="`next_cursor` of the previous page; none: start."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=feed.MAX_LIMIT)] = feed.DEFAULT_LIMIT,
) -> Any:
    """The client's opt-out feed, oldest first: every opt-out, resubscription and erasure
    of its list, and the cursor of the next page. Never skips or repeats an event, even
    when they commit out of order; no events means caught up."""
    try:
        cursor = feed.parse_cursor(after)
    except feed.BadCursor as e:
        raise Malformed(str(e)) from e
    async with _api(request).connection() as conn:
        try:
            page = await feed.page_for_key(conn, caller.client_id, caller.key, cursor, limit)
        except feed.KeyRefused as e:
            # Revoked since it was authenticated a moment ago.
            raise unauthorized() from e
    return JSONResponse(page.as_json())


async def _refused(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Refused)
    return http.answer(exc)


async def _invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"error": _first_error(exc)}, status_code=400)


async def _http(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _unavailable(_request: Request, exc: Exception) -> JSONResponse:
    # A missing grant is a deployment mistake, not the caller's.
    lacks = "the API's database user lacks a grant (see API_DATABASE_URL)"
    return http.answer(http.unavailable(exc, face="api", lacks_grant=lacks))


def create_app() -> FastAPI:
    """The API as an ASGI app, to mount at /v1; its state (`ApiContext`) comes from the
    web app's lifespan as `api`."""
    app = FastAPI(
        title="survey-worker client API",
        version="1",
        description="Launch, watch and control a client's campaigns, and follow its "
        "opt-out feed, with the client's API key.",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
        # Operation ids are the handlers' names (create_campaign, opt_out_feed, ...).
        generate_unique_id_function=lambda route: route.name,
    )
    _add_routes(app)
    _add_error_handlers(app)
    app.openapi = lambda: _document(app)  # type: ignore[method-assign]
    return app


def _add_routes(app: FastAPI) -> None:
    """The API's operations, each with the answers the OpenAPI document lists."""
    app.add_api_route(
        "/campaigns",
        create_campaign,
        methods=["POST"],
        status_code=201,
        response_model=None,
        responses={
            201: {"model": LaunchAnswer, "description": "Created."},
            200: {"model": LaunchAnswer, "description": "Launched before (Idempotency-Key)."},
            413: {
                "model": ErrorAnswer,
                "description": "A JSON body over API_JSON_MAX_BYTES, or a CSV upload over "
                "API_MAX_UPLOAD_BYTES.",
            },
            422: {
                "model": ErrorAnswer,
                "description": "The Idempotency-Key was used for another launch, or the "
                "field period (start_at, close_at, window, per_day) cannot be used.",
            },
            **ERRORS,
        },
        openapi_extra=CAMPAIGN_BODY,
    )
    for path, endpoint, model in (
        ("/campaigns/{campaign_id}", campaign_status, StatusAnswer),
        ("/campaigns/{campaign_id}/pause", pause_campaign, ControlAnswer),
        ("/campaigns/{campaign_id}/resume", resume_campaign, ControlAnswer),
        ("/campaigns/{campaign_id}/cancel", cancel_campaign, ControlAnswer),
    ):
        app.add_api_route(
            path,
            endpoint,
            methods=["GET"] if endpoint is campaign_status else ["POST"],
            response_model=None,
            responses={200: {"model": model, "description": "OK."}, **NOT_FOUND, **ERRORS},
        )
    app.add_api_route(
        "/campaigns/{campaign_id}/retry",
        retry_campaign,
        methods=["POST"],
        response_model=None,
        responses={
            200: {"model": RetryAnswer, "description": "OK."},
            409: {"model": ErrorAnswer, "description": "The campaign was cancelled."},
            413: {"model": ErrorAnswer, "description": f"A body over {RETRY_BODY_MAX} bytes."},
            **NOT_FOUND,
            **ERRORS,
        },
        openapi_extra=RETRY_BODY,
    )
    app.add_api_route(
        "/opt-outs",
        opt_out_feed,
        methods=["GET"],
        response_model=None,
        responses={200: {"model": FeedPage, "description": "OK."}, **ERRORS},
    )


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal as `{"error": ...}` with its status: the API's own, Starlette's (an
    unknown path, say), bad input as a 400, Postgres unavailable as a 503."""
    app.add_exception_handler(Refused, _refused)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http)
    for error in db.DB_ERRORS:
        app.add_exception_handler(error, _unavailable)


def _document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's OpenAPI document, without the 422 answers it adds for validation errors:
    this API answers them 400 (ErrorAnswer); its own 422 (a reused Idempotency-Key) stays."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            # "/v1", which FastAPI adds from the mount's root_path on the first request.
            servers=app.servers or None,
        )
        for path in document["paths"].values():
            for operation in path.values():
                if operation["responses"].get("422", {}).get("description") == "Validation Error":
                    del operation["responses"]["422"]
        schemas = document.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = document
    return app.openapi_schema
