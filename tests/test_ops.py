"""`/ops` over HTTP: its own credentials (OPS_USERS, HTTP Basic), CSRF protection of its
buttons, pause/resume/cancel acting on the ledger as the command line does, and the relay a
running campaign waits for, from the state workers publish in Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio
from pydantic import SecretStr

from tests.support.pipeline import add_client, csv_of, launch, opt_out, run_workers
from tests.support.smtp import RecordingHandler
from tests.support.web import ROOT, cli_environment, private_logs, serving
from tests.test_api_roles import LoginUser, login_user  # noqa: F401 (the fixture)
from worker import passwords, relays
from worker.settings import Settings
from worker.suppression import Scope
from worker.web.ops import store
from worker.web.ops.app import CSRF_LIFETIME, Users

ANNA = ("anna", "correct horse battery staple")
BOB = ("bob", "another long passphrase")
# Small scrypt parameters keep the tests fast; the format carries them.
HASHES = {user: passwords.hash_password(pw, n=2**10) for user, pw in (ANNA, BOB)}
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    with private_logs() as captured:
        yield captured


@pytest.fixture
def ops_settings(settings: Settings) -> Settings:
    users = ",".join(f"{u}:{h}" for u, h in HASHES.items())
    return settings.model_copy(update={"ops_users": SecretStr(users)})


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def status_of(pg: asyncpg.Pool, campaign_id: int) -> str:
    value: str = await pg.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id)
    return value


async def test_ops_is_not_there_without_ops_users(settings: Settings) -> None:
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/ops", headers=basic(*ANNA))).status_code == 404
        assert (await client.post("/ops/campaigns/1/pause")).status_code == 404


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("anna", "wrong password"),
        basic("carol", ANNA[1]),
        basic("anna", ""),
        {"Authorization": "Basic not-base64!"},
        {"Authorization": "Bearer " + ANNA[1]},
        {"Authorization": "Basic " + base64.b64encode(b"anna").decode()},
    ],
    ids=["none", "wrong-password", "unknown-user", "empty", "garbage", "bearer", "no-colon"],
)
async def test_ops_refuses_whoever_is_not_an_ops_user(
    ops_settings: Settings, headers: dict[str, str]
) -> None:
    async with serving(ops_settings) as base, httpx.AsyncClient(base_url=base) as client:
        page = await client.get("/ops", headers=headers)
        action = await client.post("/ops/campaigns/1/pause", headers=headers)
    for answer in (page, action):
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith('Basic realm="survey-worker ops"')
        assert "campaign" not in answer.text.lower()


async def test_the_page_lists_campaigns_under_its_own_policy_and_sets_no_cookie(
    pg: asyncpg.Pool, ops_settings: Settings
) -> None:
    await add_client(pg, "acme", "Acme <Research>")
    report = await launch(pg, ops_settings, csv_of("ann@example.com", "bob@example.com"))
    async with serving(ops_settings) as base, httpx.AsyncClient(base_url=base) as client:
        page = await client.get("/ops", headers=basic(*ANNA))
        unsubscribe = await client.get("/unsubscribe/x")
    assert page.status_code == 200
    assert f"#{report.campaign_id} test" in page.text
    assert "pending 2" in page.text
    assert 'id="rate-chart"' in page.text
    assert "set-cookie" not in page.headers
    policy = page.headers["content-security-policy"]
    assert policy.startswith("default-src 'none'; style-src 'sha256-")
    assert "script-src" not in policy
    assert policy != unsubscribe.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-frame-options"] == "DENY"
    # Each button posts the form's token.
    assert page.text.count('name="csrf"') == 2  # pause and cancel of the running campaign
    assert "ann@example.com" not in page.text


async def test_the_send_rate_chart_counts_each_accepted_first_message_once(
    pg: asyncpg.Pool, ops_settings: Settings, smtp: tuple[RecordingHandler, int]
) -> None:
    await add_client(pg, "acme")
    await opt_out(pg, ops_settings, "ann@example.com", Scope("survey", "acme"))
    people = [f"p{i}@example.com" for i in range(30)]
    report = await launch(pg, ops_settings, csv_of("ann@example.com", *people))
    await run_workers(ops_settings)
    async with pg.acquire() as conn:
        rows = {row.id: row for row in await store.overview(conn)}
    # Ann was suppressed, not accepted: the chart counts what the server accepted.
    assert sum(rows[report.campaign_id].sends) == len(people) == len(smtp[0].messages)
    async with serving(ops_settings) as base, httpx.AsyncClient(base_url=base) as client:
        page = await client.get("/ops", headers=basic(*ANNA))
    assert page.status_code == 200
    peak = re.search(
        r'aria-label="Send rate: now [0-9.]+ messages per second, peak ([0-9.]+)"', page.text
    )
    assert peak is not None and float(peak[1]) > 0


async def test_the_page_says_when_a_scheduled_or_waiting_campaign_sends_next(
    pg: asyncpg.Pool, ops_settings: Settings
) -> None:
    await add_client(pg, "acme")
    scheduled = await launch(pg, ops_settings, csv_of("ann@example.com"))
    waiting = await launch(pg, ops_settings, csv_of("bob@example.com"))
    start = datetime(2099, 1, 2, 9, 0, tzinfo=UTC)
    await pg.execute(
        "UPDATE campaigns SET status = 'scheduled', start_at = $2 WHERE id = $1",
        scheduled.campaign_id,
        start,
    )
    await pg.execute(
        "UPDATE campaigns SET send_window = 'Mon-Fri 09:00-17:00', waiting_until = $2 "
        "WHERE id = $1",
        waiting.campaign_id,
        start,
    )
    async with serving(ops_settings) as base, httpx.AsyncClient(base_url=base) as client:
        page = await client.get("/ops", headers=basic(*ANNA))
    assert page.status_code == 200
    assert '<p class="waiting">scheduled for 2099-01-02 09:00:00 UTC</p>' in page.text
    assert (
        '<p class="waiting">waiting for the window; next send 2099-01-02 09:00:00 UTC</p>'
        in page.text
    )


async def flashed(client: httpx.AsyncClient, user: tuple[str, str]) -> str:
    """The notice of the page an action redirected to (the flash cookie sent back)."""
    page = await client.get("/ops", headers=basic(*user))
    assert page.status_code == 200
    notice = re.search(r'<p class="notice" role="status">([^<]*)</p>', page.text)
    return "" if notice is None else notice.group(1)


async def form_token(client: httpx.AsyncClient, user: tuple[str, str]) -> str:
    """The CSRF token of `user`'s page."""
    page = await client.get("/ops", headers=basic(*user))
    match = CSRF.search(page.text)
    assert page.status_code == 200 and match is not None
    return match.group(1)


def tampered(token: str) -> str:
    """`token` with its last (hex) character changed."""
    return token[:-1] + ("1" if token[-1] == "0" else "0")


async def test_buttons_need_the_forms_token_from_the_same_site(
    pg: asyncpg.Pool, ops_settings: Settings
) -> None:
    await add_client(pg, "acme")
    report = await launch(pg, ops_settings, csv_of("ann@example.com"), enqueue=False)
    number = report.campaign_id
    users = Users(passwords.parse_users(",".join(f"{u}:{h}" for u, h in HASHES.items())))
    stale = users.csrf_token("anna", now=time.time() - CSRF_LIFETIME - 60)
    bobs = users.csrf_token("bob", now=time.time())
    async with serving(ops_settings) as base, httpx.AsyncClient(base_url=base) as client:
        page = await client.get("/ops", headers=basic(*ANNA))
        match = CSRF.search(page.text)
        assert match is not None
        token = match.group(1)
        url = f"/ops/campaigns/{number}/pause"
        refusals = [
            await client.post(url, headers=basic(*ANNA)),
            await client.post(url, headers=basic(*ANNA), data={"csrf": ""}),
            await client.post(url, headers=basic(*ANNA), data={"csrf": tampered(token)}),
            await client.post(url, headers=basic(*ANNA), data={"csrf": stale}),
            await client.post(url, headers=basic(*ANNA), data={"csrf": bobs}),
            await client.post(url, headers=basic(*BOB), data={"csrf": token}),
            await client.post(
                url,
                headers={**basic(*ANNA), "Sec-Fetch-Site": "cross-site"},
                data={"csrf": token},
            ),
            await client.post(
                url,
                headers={**basic(*ANNA), "Sec-Fetch-Site": "same-site"},
                data={"csrf": token},
            ),
            await client.post(url, headers=basic(*ANNA), content=b"csrf=" + b"x" * 5000),
        ]
        assert [r.status_code for r in refusals] == [403] * len(refusals)
        assert await status_of(pg, number) == "running"

        paused = await client.post(
            url, headers={**basic(*ANNA), "Sec-Fetch-Site": "same-origin"}, data={"csrf": token}
        )
        assert (paused.status_code, paused.headers["location"]) == (303, "/ops")
        assert await status_of(pg, number) == "paused"
        assert f"campaign {number}: paused" in await flashed(client, ANNA)
        again = await client.post(url, headers=basic(*ANNA), data={"csrf": token})
        assert again.status_code == 303
        assert f"campaign {number}: paused (unchanged)" in await flashed(client, ANNA)

        resumed = await client.post(
            f"/ops/campaigns/{number}/resume", headers=basic(*ANNA), data={"csrf": token}
        )
        assert resumed.status_code == 303
        assert f"campaign {number}: running" in await flashed(client, ANNA)
        assert await status_of(pg, number) == "running"
        cancelled = await client.post(
            f"/ops/campaigns/{number}/cancel",
            headers=basic(*BOB),
            data={"csrf": bobs, "confirm": "yes"},
        )
        assert cancelled.status_code == 303
        assert f"campaign {number}: cancelled" in await flashed(client, BOB)
        assert await status_of(pg, number) == "cancelled"
        state = await pg.fetchval("SELECT state FROM invitations WHERE campaign_id = $1", number)
        assert state == "cancelled"

        missing = await client.post(
            "/ops/campaigns/999999/pause", headers=basic(*ANNA), data={"csrf": token}
        )
        unknown = await client.post(
            f"/ops/campaigns/{number}/delete", headers=basic(*ANNA), data={"csrf": token}
        )
        assert (missing.status_code, unknown.status_code) == (404, 404)


async def ledger_of(pg: asyncpg.Pool, campaign_id: int) -> list[tuple[Any, ...]]:
    """The campaign's row and its invitations' rows, as the ledger holds them."""
    campaign = await pg.fetch("SELECT * FROM campaigns WHERE id = $1", campaign_id)
    invitations = await pg.fetch(
        "SELECT * FROM invitations WHERE campaign_id = $1 ORDER BY id", campaign_id
    )
    return [tuple(r) for r in [*campaign, *invitations]]


async def test_actions_redirect_to_ops_and_show_their_result_once(
    pg: asyncpg.Pool, ops_settings: Settings
) -> None:
    await add_client(pg, "acme")
    report = await launch(pg, ops_settings, csv_of("ann@example.com"), enqueue=False)
    number = report.campaign_id
    async with serving(ops_settings) as base, httpx.AsyncClient(base_url=base) as client:
        token = await form_token(client, ANNA)
        paused = await client.post(
            f"/ops/campaigns/{number}/pause", headers=basic(*ANNA), data={"csrf": token}
        )
        # Post/redirect/get: See Other to the page, the result in a cookie of /ops alone.
        assert paused.status_code == 303
        assert paused.headers["location"] == "/ops"
        cookie = paused.headers["set-cookie"]
        assert cookie.startswith("ops_flash=")
        for attribute in ("Path=/ops", "HttpOnly", "SameSite=strict", "Max-Age=60"):
            assert attribute.lower() in cookie.lower(), cookie
        value = client.cookies["ops_flash"]
        assert "ann" not in value and "anna" not in value  # a number, a status and a MAC
        assert await status_of(pg, number) == "paused"

        # Bob cannot read Anna's flash, nor Anna a forged one; neither is shown.
        async with httpx.AsyncClient(base_url=base) as other:
            others = await other.get(
                "/ops", headers={**basic(*BOB), "Cookie": f"ops_flash={value}"}
            )
            forged = await other.get(
                "/ops", headers={**basic(*ANNA), "Cookie": f"ops_flash={tampered(value)}"}
            )
        assert 'role="status"' not in others.text + forged.text

        shown = await client.get("/ops", headers=basic(*ANNA))
        assert shown.status_code == 200
        assert f'<p class="notice" role="status">campaign {number}: paused</p>' in shown.text
        assert "ops_flash=" in shown.headers["set-cookie"]  # deleted as it is shown
        assert "max-age=0" in shown.headers["set-cookie"].lower()
        # Reload: the client sent back what it keeps, and the flash is gone.
        reloaded = await client.get("/ops", headers=basic(*ANNA))
        assert reloaded.status_code == 200
        assert 'role="status"' not in reloaded.text
        assert "set-cookie" not in reloaded.headers
        # The address a POST went to is not a page (405), and /ops posts nothing.
        assert (await client.get(f"/ops/campaigns/{number}/pause")).status_code == 405


async def test_cancel_asks_first_and_only_the_confirmation_cancels(
    pg: asyncpg.Pool, ops_settings: Settings
) -> None:
    await add_client(pg, "acme")
    report = await launch(
        pg, ops_settings, csv_of("ann@example.com", "bob@example.com"), enqueue=False
    )
    number = report.campaign_id
    before = await ledger_of(pg, number)
    async with serving(ops_settings) as base, httpx.AsyncClient(base_url=base) as client:
        token = await form_token(client, ANNA)
        url = f"/ops/campaigns/{number}/cancel"
        for fields in ({"csrf": token}, {"csrf": token, "confirm": "no"}):
            asked = await client.post(url, headers=basic(*ANNA), data=fields)
            assert asked.status_code == 303
            assert asked.headers["location"] == f"/ops?cancel={number}#confirm"
            assert "set-cookie" not in asked.headers
            assert await ledger_of(pg, number) == before  # nothing cancelled
        question = await client.get(f"/ops?cancel={number}", headers=basic(*ANNA))
        assert question.status_code == 200
        assert f"Cancel campaign #{number} test?" in question.text
        assert "2 invitations not yet sent will never be sent" in question.text
        form = re.search(
            rf'<form method="post" action="/ops/campaigns/{number}/cancel">(.*?)</form>',
            question.text[question.text.index('id="confirm"') :],
            re.S,
        )
        assert form is not None
        assert '<input type="hidden" name="confirm" value="yes">' in form.group(1)
        assert "<script" not in question.text
        assert 'href="/ops">No, keep it</a>' in question.text
        assert await ledger_of(pg, number) == before

        again = CSRF.search(question.text)
        assert again is not None
        confirmed = await client.post(
            url, headers=basic(*ANNA), data={"csrf": again.group(1), "confirm": "yes"}
        )
        assert (confirmed.status_code, confirmed.headers["location"]) == (303, "/ops")
        assert await status_of(pg, number) == "cancelled"
        states = await pg.fetch("SELECT state FROM invitations WHERE campaign_id = $1", number)
        assert [r["state"] for r in states] == ["cancelled", "cancelled"]
        assert f"campaign {number}: cancelled" in await flashed(client, ANNA)
        # A campaign that can no longer be cancelled is not asked about.
        ended = await client.get(f"/ops?cancel={number}", headers=basic(*ANNA))
        assert 'id="confirm"' not in ended.text


def test_ops_users_must_be_user_colon_hash() -> None:
    good = passwords.hash_password("pw", n=2**10)
    assert set(passwords.parse_users(f"anna:{good}, bob:{good},")) == {"anna", "bob"}
    for bad in (
        "anna",
        f"an na:{good}",
        f"anna:{good},anna:{good}",
        "anna:plaintext-password",
        "anna:" + good.replace("scrypt.1024", "scrypt.1000"),
        "anna:" + good.replace("scrypt.1024", "scrypt.67108864"),
    ):
        with pytest.raises(passwords.BadUsers) as caught:
            passwords.parse_users(bad)
        assert good.split(".")[-1] not in str(caught.value)
    with pytest.raises(ValueError, match="ops_users"):
        Settings(_env_file=None, ops_users="anna:secret")  # type: ignore[call-arg]


async def test_ops_password_prints_an_entry_that_verifies(settings: Settings) -> None:
    async def run(*args: str, stdin: bytes) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            *args,
            env=cli_environment(settings),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(stdin), 60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, out, err = await run("ops-password", "anna", stdin=ANNA[1].encode() + b"\n")
    assert code == 0, err
    user, _, hashed = out.strip().partition(":")
    assert user == "anna" and ANNA[1] not in out
    parsed = passwords.Hash.parse(hashed)
    assert (parsed.n, parsed.r, parsed.p) == (2**17, 8, 1)
    assert parsed.verify(ANNA[1]) and not parsed.verify(BOB[1])
    assert passwords.parse_users(out.strip())["anna"] == parsed
    code, out, err = await run("ops-password", "anna", stdin=b"short\n")
    assert (code, out) == (1, "")
    assert err.strip() == "Error: the password must be at least 12 characters"
    code, _, err = await run("ops-password", "ann@example", stdin=ANNA[1].encode())
    assert code == 1 and "USER" in err


async def test_a_running_campaign_whose_relays_are_all_in_trouble_says_what_it_waits_for(
    pg: asyncpg.Pool, ops_settings: Settings
) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{**ops_settings.model_dump(), "smtp_relays": "esp,backup"},
        smtp_relay_variables={
            "SMTP_RELAY_ESP_URL": "smtp://user:secret@127.0.0.1:2525",
            "SMTP_RELAY_BACKUP_URL": "smtp://127.0.0.1:2526",
        },
    )
    # acme's mail leaves only through esp; beta's through either relay.
    await add_client(pg, "acme")
    await add_client(pg, "beta")
    await pg.execute("UPDATE clients SET relays = '{esp}' WHERE id = 'acme'")
    waits = await launch(pg, settings, csv_of("ann@example.com"), enqueue=False)
    paused = await launch(pg, settings, csv_of("bob@example.com"), enqueue=False)
    await pg.execute("UPDATE campaigns SET status = 'paused' WHERE id = $1", paused.campaign_id)
    other = await launch(pg, settings, csv_of("cy@example.com"), client_id="beta", enqueue=False)
    # The state as a worker publishes it (relays.Relays._publish): esp refuses the login.
    since = datetime(2026, 11, 30, 4, 30, tzinfo=UTC)
    trouble = relays.Health(
        "auth_failed", 535, "5.7.8", "Authentication <credentials> invalid", since=since
    )
    assert settings.redis_url is not None
    client = redis.asyncio.from_url(settings.redis_url)
    await client.hset(relays.KEY, "esp", json.dumps(trouble.public()))  # type: ignore[misc]
    await client.hset(relays.KEY, "backup", json.dumps(relays.Health().public()))  # type: ignore[misc]
    await client.aclose()
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as http:
        page = await http.get("/ops", headers=basic(*ANNA))
    assert page.status_code == 200
    line = (
        '<p class="waiting">waiting for relay esp: auth_failed (535 5.7.8 Authentication '
        "&lt;credentials&gt; invalid) since 2026-11-30T04:30:00+00:00</p>"
    )
    assert page.text.count('class="waiting"') == 1, page.text
    sections = {
        number: re.search(rf'id="campaign-{number}".*?</section>', page.text, re.S)
        for number in (waits.campaign_id, paused.campaign_id, other.campaign_id)
    }
    found = {number: match.group(0) if match else "" for number, match in sections.items()}
    assert line in found[waits.campaign_id]
    # Paused, it waits for nobody; beta's route still has a healthy relay.
    assert "waiting for relay" not in found[paused.campaign_id] + found[other.campaign_id]

    # Redis down: the page answers, and says nothing of relays it cannot know.
    async with (
        serving(settings, redis_url="redis://127.0.0.1:1/0") as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        blind = await http.get("/ops", headers=basic(*ANNA))
    assert blind.status_code == 200
    assert f"#{waits.campaign_id} test" in blind.text
    assert "waiting for relay" not in blind.text


async def test_ops_says_when_postgres_is_down(ops_settings: Settings) -> None:
    down = "postgresql://nobody@127.0.0.1:1/none"
    async with (
        serving(ops_settings, database_url=down) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        page = await client.get("/ops", headers=basic(*ANNA))
    assert page.status_code == 503
    assert page.headers["retry-after"] == "5"
    assert page.text == "the database is unavailable; try again shortly\n"


async def test_ops_acts_through_the_apis_worker_login_and_says_when_the_web_role_cannot(
    pg: asyncpg.Pool,
    ops_settings: Settings,
    login_user: LoginUser,  # noqa: F811
) -> None:
    worker_url, web_url = await login_user("survey_worker"), await login_user("survey_web")
    await add_client(pg, "acme")
    report = await launch(pg, ops_settings, csv_of("ann@example.com"), enqueue=False)
    web_settings = ops_settings.model_copy(update={"database_url": web_url})
    async with (
        serving(web_settings.model_copy(update={"api_database_url": worker_url})) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        page = await client.get("/ops", headers=basic(*ANNA))
        match = CSRF.search(page.text)
        assert page.status_code == 200 and match is not None
        paused = await client.post(
            f"/ops/campaigns/{report.campaign_id}/pause",
            headers=basic(*ANNA),
            data={"csrf": match.group(1)},
        )
        assert paused.status_code == 303
        assert f"campaign {report.campaign_id}: paused" in await flashed(client, ANNA)
    async with (
        serving(web_settings) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        refused = await client.get("/ops", headers=basic(*ANNA))
        scraped = await client.get("/metrics")
    assert refused.status_code == 503
    assert "API_DATABASE_URL" in refused.text
    # The web role reads campaigns and invitations: its metrics need nothing more.
    assert 'survey_worker_campaigns{status="paused"} 1.0' in scraped.text
