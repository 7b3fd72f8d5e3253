"""`/ops`, the operators' view of the campaigns, and `/metrics`, on the web app.

    GET  /metrics                              Prometheus metrics of this web process and
                                               the ledger's campaigns by status; with
                                               METRICS_TOKEN set, `Authorization: Bearer`
    GET  /ops                                  campaigns: progress by state, send rate,
                                               feedback rates, pause reason, the relay a
                                               running campaign waits for; with
                                               `?cancel=ID`, the confirmation of a cancel
    POST /ops/campaigns/{id}/{pause|resume|cancel}
                                               303 See Other to /ops (post/redirect/get);
                                               a cancel without `confirm=yes` cancels
                                               nothing and leads to its confirmation

`/ops` is 404 while OPS_USERS is unset. Its users sign in with HTTP Basic authentication
(RFC 7617) against OPS_USERS's scrypt hashes. A POST must carry the form's CSRF token, an
HMAC of the user and the time under a key derived from that user's password hash (never
from the unsubscribe secrets), valid for CSRF_LIFETIME, and must not come from another site
(`Sec-Fetch-Site`). An action's result ("campaign 12: paused") rides to the next GET in the
one cookie /ops sets, `ops_flash` (Path=/ops, HttpOnly, SameSite=Strict, a minute): the
campaign's number and status signed like the CSRF token, for that user only; the GET that
shows it deletes it, so a reload does not show it again. It reads and acts through the client API's
database connection (API_DATABASE_URL, else DATABASE_URL): pausing takes a login that
may update campaigns, as `pause` on the command line does. The relays' state comes from
the Redis hash the workers publish it in (`worker.relays`); while Redis does not answer,
the page shows no waiting line and still answers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2
import structlog
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from worker import campaigns, db, metrics, passwords, queue, relay_config, states
from worker.errors import NotFound, TooLarge
from worker.relays import route_report, waiting_lines
from worker.settings import Settings
from worker.states import DISPLAY_ORDER, MOVES, Action, actions_from, decided
from worker.web import http
from worker.web.api.app import ApiContext
from worker.web.ops import charts, store

log = structlog.get_logger("worker.ops")

TEMPLATES = Path(__file__).resolve().parent / "templates"
CSRF_LIFETIME = 12 * 3600
# A password that checked out is remembered this long (scrypt costs 128 MiB and a few
# tenths of a second: not for every request of a page).
VERIFIED_FOR = 300.0
MAX_FORM = 1024
# The flash cookie: its name, and how long an action's result waits for the page.
FLASH = "ops_flash"
FLASH_LIFETIME = 60
LEDGER_TIMEOUT = 3.0
# The most the page waits for the relays' state in Redis.
RELAYS_TIMEOUT = 2.0
CHALLENGE = 'Basic realm="survey-worker ops", charset="UTF-8"'
CONTROLS: dict[str, Action] = {action: action for action in MOVES}
# A rate this close to its pause threshold is shown in red.
WARN_SHARE = 0.8


class Users:
    """OPS_USERS: who may sign in, checked with scrypt one at a time."""

    def __init__(self, users: dict[str, passwords.Hash]) -> None:
        self._users = users
        self._dummy = passwords.dummy_like(users.values())
        self._memo_key = secrets.token_bytes(32)
        self._verified: dict[bytes, float] = {}
        # One scrypt at a time: a flood of wrong passwords waits, it does not eat memory.
        self._checking = asyncio.Semaphore(1)

    def __bool__(self) -> bool:
        return bool(self._users)

    def hash_for(self, user: str) -> tuple[passwords.Hash, bool]:
        """The hash a sign-in as `user` is verified against, and whether the user exists:
        an unknown user's is a dummy of the same cost (user enumeration by timing)."""
        hashed = self._users.get(user)
        return (self._dummy, False) if hashed is None else (hashed, True)

    async def authenticate(self, header: str | None) -> str | None:
        """The user an `Authorization: Basic` header proves, or None."""
        scheme, _, encoded = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, colon, password = decoded.partition(":")
        if not colon:
            return None
        memo = hmac.new(self._memo_key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        now = time.monotonic()
        if self._verified.get(memo, 0.0) > now:
            return user
        hashed, known = self.hash_for(user)
        async with self._checking:
            ok = await asyncio.to_thread(hashed.verify, password)
        if not (ok and known):
            return None
        self._verified = {k: t for k, t in self._verified.items() if t > now}
        self._verified[memo] = now + VERIFIED_FOR
        return user

    def csrf_token(self, user: str, *, now: float) -> str:
        """The token a form of `user`'s page carries."""
        issued = str(int(now))
        return f"{issued}.{self._mac(user, issued)}"

    def csrf_ok(self, user: str, token: str, *, now: float) -> bool:
        """Whether `token` is one of `user`'s, and not older than CSRF_LIFETIME."""
        issued, _, mac = token.partition(".")
        if (
            not (issued.isascii() and issued.isdigit() and len(issued) <= 12)
            or not 0 <= now - int(issued) <= CSRF_LIFETIME
        ):
            return False
        # As bytes: compare_digest refuses str with characters beyond ASCII.
        return hmac.compare_digest(mac.encode(), self._mac(user, issued).encode())

    def flash(self, user: str, result: Flash, *, now: float) -> str:
        """The `ops_flash` cookie's value that carries `result` to `user`'s next page."""
        body = f"{int(now)}.{result.campaign_id}.{result.status}.{int(result.moved)}"
        return f"{body}.{self._mac(user, body, purpose='flash')}"

    def flash_of(self, user: str, value: str, *, now: float) -> Flash | None:
        """The result an `ops_flash` cookie carries, when it is `user`'s and fresh."""
        body, _, mac = value.rpartition(".")
        issued, number, status, moved = [*body.split("."), "", "", ""][:4]
        if not (
            issued.isascii()
            and issued.isdigit()
            and len(issued) <= 12
            and 0 <= now - int(issued) <= FLASH_LIFETIME
            and number.isascii()
            and number.isdigit()
            and len(number) <= 18
            and status in states.CAMPAIGN_STATUSES
            and moved in ("0", "1")
        ):
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(user, body, purpose="flash").encode()):
            return None
        return Flash(int(number), status, moved == "1")

    def _mac(self, user: str, message: str, *, purpose: str = "csrf") -> str:
        key = self._users[user].secret(f"survey-worker ops {purpose}")
        return hmac.new(key, f"{user}:{message}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Flash:
    """An action's result, shown once on the page the action redirects to."""

    campaign_id: int
    status: str
    moved: bool

    def __str__(self) -> str:
        unchanged = "" if self.moved else " (unchanged)"
        return f"campaign {self.campaign_id}: {self.status}{unchanged}"


class Pages:
    """The `/ops` page (autoescaped Jinja) and the policy that allows its one style sheet."""

    def __init__(self) -> None:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._template = env.get_template("ops.html")
        # Our own fixed style sheet, marked safe so that escaping cannot change its hash.
        self._style = Markup((TEMPLATES / "ops.css").read_text(encoding="utf-8").strip())  # noqa: S704
        digest = base64.b64encode(hashlib.sha256(str(self._style).encode()).digest()).decode()
        self.content_security_policy = (
            f"default-src 'none'; style-src 'sha256-{digest}'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        )

    def render(self, **context: Any) -> str:
        """The page's HTML."""
        return self._template.render(style=self._style, **context)


@dataclass(frozen=True)
class Thresholds:
    """The reputation guard's thresholds, shown next to each campaign's rates."""

    bounce: float
    complaint: float


def _view(row: store.CampaignRow, limits: Thresholds, waiting: list[str]) -> dict[str, Any]:
    """What the template shows of one campaign (pure); `waiting`: "waiting for relay NAME:
    REASON (REPLY) since TIME" for each relay it waits for."""
    sent = row.counts.get("sent", 0)
    fb = row.feedback
    hard, complaints, refused = fb.get("hard", 0), fb.get("complaint", 0), fb.get("refused", 0)
    bounce_rate = charts.rate(hard, sent + refused)
    complaint_rate = charts.rate(complaints, sent)
    return {
        "row": row,
        "segments": charts.progress(row.counts),
        "chart": charts.sparkline(row.sends, bucket_seconds=store.BUCKET_SECONDS),
        "done": decided(row.counts),
        "hard": hard,
        "soft": fb.get("soft", 0),
        "policy": fb.get("policy", 0),
        "complaints": complaints,
        "bounce_rate": bounce_rate,
        "complaint_rate": complaint_rate,
        "bounce_warn": bounce_rate is not None and bounce_rate >= WARN_SHARE * limits.bounce,
        "complaint_warn": complaint_rate is not None
        and complaint_rate >= WARN_SHARE * limits.complaint,
        "actions": actions_from(row.status),
        "waiting": waiting,
    }


class Ops:
    """The handlers of `/ops` and `/metrics`, with what they share."""

    def __init__(self, settings: Settings, counts: metrics.WebMetrics) -> None:
        hashes = settings.ops_users.get_secret_value() if settings.ops_users else ""
        self.users = Users(passwords.parse_users(hashes))
        token = settings.metrics_token
        self.metrics_token = token.get_secret_value().encode() if token else None
        self.counts = counts
        self.registry = metrics.process_registry(counts)
        self.pages = Pages()
        self.limits = Thresholds(settings.pause_bounce_rate, settings.pause_complaint_rate)
        self.relays = relay_config.relays(settings)

    def routes(self) -> list[Route]:
        """The routes to add to the web app."""
        return [
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/ops", self.ops_page, methods=["GET"]),
            Route("/ops/campaigns/{campaign_id}/{action}", self.ops_action, methods=["POST"]),
        ]

    async def metrics(self, request: Request) -> Response:
        """GET /metrics: this process's metrics and the ledger's campaigns by status."""
        if self.metrics_token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self.metrics_token
            ):
                return PlainTextResponse(
                    "unauthorized\n", status_code=401, headers={"WWW-Authenticate": "Bearer"}
                )
        api: ApiContext = request.state.api
        try:
            async with asyncio.timeout(LEDGER_TIMEOUT), api.connection() as conn:
                self.counts.campaigns = await store.campaign_statuses(conn)
                self.counts.due = await store.due_invitations(conn)
                self.counts.domains = await store.domain_verdicts(conn)
        except (*db.DB_ERRORS, TimeoutError) as e:
            log.warning("metrics.ledger_unavailable", error=type(e).__name__)
            self.counts.campaigns = None
        body, content_type = metrics.exposition(self.registry, request.headers.get("accept", ""))
        return Response(body, headers={"Content-Type": content_type})

    async def _user(self, request: Request) -> str | Response:
        if not self.users:
            return PlainTextResponse("not found\n", status_code=404)
        user = await self.users.authenticate(request.headers.get("authorization"))
        if user is None:
            return PlainTextResponse(
                "sign in with an OPS_USERS user\n",
                status_code=401,
                headers={"WWW-Authenticate": CHALLENGE},
            )
        return user

    async def ops_page(self, request: Request) -> Response:
        """GET /ops: the campaigns, the result of the last action once, and with
        `?cancel=ID` the confirmation of that campaign's cancel."""
        user = await self._user(request)
        if isinstance(user, Response):
            return user
        cookie = request.cookies.get(FLASH)
        notice = None if cookie is None else self.users.flash_of(user, cookie, now=time.time())
        asked = request.query_params.get("cancel", "")
        confirm = int(asked) if asked.isascii() and asked.isdigit() and len(asked) <= 18 else None
        response = await self._page(request, user, notice=notice, confirm=confirm)
        if cookie is not None:
            response.delete_cookie(FLASH, path="/ops", httponly=True, samesite="strict")
        return response

    async def ops_action(self, request: Request) -> Response:
        """POST /ops/campaigns/{id}/{action}: pause, resume or cancel (idempotent)."""
        user = await self._user(request)
        if isinstance(user, Response):
            return user
        if request.headers.get("sec-fetch-site", "same-origin") != "same-origin":
            return PlainTextResponse("cross-site request refused\n", status_code=403)
        try:
            form = await http.read_body(request, MAX_FORM)
        except TooLarge:
            form = b""  # no token: refused below
        fields = parse_qs(form.decode("latin-1"))
        token = fields.get("csrf", [""])[0]
        if not self.users.csrf_ok(user, token, now=time.time()):
            log.warning("ops.csrf_refused", user=user)
            return PlainTextResponse(
                "the form is stale or forged: reload /ops and try again\n", status_code=403
            )
        action = CONTROLS.get(request.path_params["action"])
        number = request.path_params["campaign_id"]
        if action is None or not number.isdigit() or len(number) > 18:
            return PlainTextResponse("not found\n", status_code=404)
        campaign_id = int(number)
        if action == "cancel" and fields.get("confirm") != ["yes"]:
            # Cannot be undone: the first POST only asks (a page that works without script).
            return RedirectResponse(f"/ops?cancel={campaign_id}#confirm", status_code=303)
        api: ApiContext = request.state.api
        try:
            async with api.connection() as conn:
                moved, status = await campaigns.control(conn, campaign_id, action)
        except NotFound:
            return PlainTextResponse("no such campaign\n", status_code=404)
        except db.DB_ERRORS as e:
            return _unavailable(e)
        if moved:
            log.info(f"campaign.{status}", campaign_id=campaign_id, via="ops", user=user)
            if status == "running":
                await _enqueue_launch(api, campaign_id)
        # Post/redirect/get: a reload of the page shows fresh figures and posts nothing.
        answer = RedirectResponse("/ops", status_code=303)
        answer.set_cookie(
            FLASH,
            self.users.flash(user, Flash(campaign_id, status, moved), now=time.time()),
            max_age=FLASH_LIFETIME,
            path="/ops",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return answer

    async def _page(
        self, request: Request, user: str, *, notice: Flash | None, confirm: int | None = None
    ) -> Response:
        api: ApiContext = request.state.api
        try:
            async with api.connection() as conn:
                rows = await store.overview(conn)
        except db.DB_ERRORS as e:
            return _unavailable(e)
        waiting = await self._waiting(api, rows)
        views = [
            _view(row, self.limits, [*filter(None, [row.waiting]), *waiting.get(row.id, [])])
            for row in rows
        ]
        # Only a campaign that can still be cancelled is asked about.
        asking = next(
            (v for v in views if v["row"].id == confirm and "cancel" in v["actions"]), None
        )
        total = charts.summed([row.sends for row in rows], store.BUCKETS)
        html = self.pages.render(
            user=user,
            now=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            notice=None if notice is None else str(notice),
            asking=asking,
            chart=charts.rate_chart(total, bucket_seconds=store.BUCKET_SECONDS),
            window_minutes=store.BUCKETS * store.BUCKET_SECONDS // 60,
            bucket_seconds=store.BUCKET_SECONDS,
            states=DISPLAY_ORDER,
            campaigns=views,
            csrf=self.users.csrf_token(user, now=time.time()),
            pause_bounce_rate=self.limits.bounce,
            pause_complaint_rate=self.limits.complaint,
        )
        return HTMLResponse(
            html, headers={"Content-Security-Policy": self.pages.content_security_policy}
        )

    async def _waiting(
        self, api: ApiContext, rows: list[store.CampaignRow]
    ) -> dict[int, list[str]]:
        """The waiting lines of each running campaign whose route's relays are all in
        trouble, from the states the workers published in Redis; none while Redis does not
        answer within RELAYS_TIMEOUT (the relays' state is then unknown)."""
        running = [row for row in rows if row.status == "running"]
        found: dict[int, list[str]] = {}
        if not running:
            return found
        try:
            async with asyncio.timeout(RELAYS_TIMEOUT):
                redis = None
                with contextlib.suppress(*queue.ERRORS):
                    redis = await api.jobs.get()
                for row in running:
                    listed, waits = await route_report(redis, self.relays, row.route, row.status)
                    if waits:
                        found[row.id] = waiting_lines(listed)
        except TimeoutError:
            return {}
        return found


def _unavailable(error: BaseException) -> Response:
    # A missing grant is a deployment mistake: /ops reads feedback and controls campaigns,
    # which the web role may not do.
    lacks = "the database user lacks a grant: set API_DATABASE_URL (a survey_worker login)"
    return http.answer_text(http.unavailable(error, face="ops", lacks_grant=lacks))


async def _enqueue_launch(api: ApiContext, campaign_id: int) -> None:
    """Ask the workers to go on with a resumed campaign; when Redis cannot take it, the
    reconcile cron does (logged)."""
    try:
        async with asyncio.timeout(LEDGER_TIMEOUT):
            await queue.enqueue_launch(await api.jobs.get(), campaign_id)
    except queue.ERRORS as e:
        log.warning("campaign.enqueue_failed", campaign_id=campaign_id, error=type(e).__name__)
