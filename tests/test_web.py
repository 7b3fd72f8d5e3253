"""The unsubscribe web app on a real uvicorn server, real Postgres and real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
import redis
import redis.asyncio
from pydantic import SecretStr

from tests.deploy.servers import debian_redis
from tests.support.pipeline import add_client, csv_of, launch, received_by, run_workers
from tests.support.smtp import RecordingHandler
from tests.support.web import cli, email_hash, private_logs, serving, token_for, token_id
from worker import held_optouts
from worker.dev import embedded
from worker.settings import Settings
from worker.web import unsubscribe

ANN = "ann.unsubscriber@example.com"
SECURITY_HEADERS = {
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
}


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    with private_logs() as captured:
        yield captured


async def opt_outs(pool: asyncpg.Pool) -> list[tuple[str, str | None, str]]:
    rows = await pool.fetch(
        """SELECT client_id AS list, email, source FROM client_opt_outs
           UNION ALL SELECT 'marketing', email, source FROM marketing_opt_outs ORDER BY 1"""
    )
    return [(r["list"], r["email"], r["source"]) for r in rows]


async def audit_rows(pool: asyncpg.Pool) -> list[tuple[str, str, str, str | None]]:
    rows = await pool.fetch("SELECT action, scope, actor, reason FROM opt_out_audit ORDER BY id")
    return [(r["action"], r["scope"], r["actor"], r["reason"]) for r in rows]


def assert_private_headers(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "form-action 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert "set-cookie" not in response.headers
    assert "location" not in response.headers


def multipart_one_click(boundary: str = "sw-boundary-8058") -> tuple[bytes, str]:
    """The RFC 8058 section 3.1 body as multipart/form-data, as a mail client sends it."""
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="List-Unsubscribe"\r\n'
        "\r\n"
        "One-Click\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    return body, f"multipart/form-data; boundary={boundary}"


async def test_get_shows_the_confirmation_page_and_changes_nothing(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    await add_client(pg, "acme", "Acme & <Research>")
    survey = token_for(settings, ANN, await token_id(pg, "acme"), locale="nl")
    marketing = token_for(settings, ANN, None, locale="fr")
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as client:
        page = await client.get(f"/unsubscribe/{survey}")
        again = await client.get(f"/unsubscribe/{survey}")
        french = await client.get(f"/unsubscribe/{marketing}")
    assert page.status_code == again.status_code == 200
    assert_private_headers(page)
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    html = page.text
    assert '<html lang="nl">' in html
    assert "Acme &amp; &lt;Research&gt;" in html  # the client's name, escaped
    assert "<Research>" not in html
    assert html.count("<form") == 1 and 'method="post"' in html
    assert html.count("<button") == 1 and "Afmelden</button>" in html
    assert '<html lang="fr">' in french.text and "e-mails marketing" in french.text
    assert await opt_outs(pg) == []
    assert await audit_rows(pg) == []


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
async def test_one_click_post_records_once_with_200_and_no_redirect(
    pg: asyncpg.Pool, settings: Settings, encoding: str
) -> None:
    await add_client(pg, "acme", "Acme Research")
    token = token_for(settings, ANN, await token_id(pg, "acme"))
    if encoding == "urlencoded":
        body, content_type = b"List-Unsubscribe=One-Click", "application/x-www-form-urlencoded"
    else:
        body, content_type = multipart_one_click()
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as client:
        responses = [
            await client.post(
                f"/unsubscribe/{token}", content=body, headers={"content-type": content_type}
            )
            for _ in range(3)
        ]
    for response in responses:
        assert response.status_code == 200
        assert_private_headers(response)
        assert "You are unsubscribed" in response.text
        assert "survey invitations from Acme Research" in response.text
    # No address stored: no invitation ever held it (the token carries only the hash).
    assert await opt_outs(pg) == [("acme", None, "one-click")]
    assert await audit_rows(pg) == [("opt_out", "client:acme", "recipient", "one-click")]


async def test_the_page_button_records_a_web_opt_out_with_the_stored_address(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    await add_client(pg, "acme")
    await pg.execute(
        """WITH c AS (INSERT INTO campaigns (client_id, name, kind, template, survey_url)
                      VALUES ('acme', 'x', 'marketing', 'marketing', '') RETURNING id)
           INSERT INTO invitations (campaign_id, email, email_hash)
           SELECT id, $1, $2 FROM c""",
        ANN,
        email_hash(settings, ANN),
    )
    token = token_for(settings, ANN, None)
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as client:
        response = await client.post(f"/unsubscribe/{token}", data={"confirm": "yes"})
    assert response.status_code == 200
    assert "marketing e-mail" in response.text
    assert await opt_outs(pg) == [("marketing", ANN, "web")]


def tampered(token: str) -> list[str]:
    flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    return [
        flipped,
        token[:-1],
        token[:40],
        token + "A",
        token[:-2] + "==",
        "x" * 88,
        "not-a-token",
    ]


async def test_tampered_truncated_and_unknown_key_tokens_get_one_400_page(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    await add_client(pg, "acme")
    genuine = token_for(settings, ANN, await token_id(pg, "acme"))
    foreign = token_for(settings, ANN, await token_id(pg, "acme"), key=b"some-other-key-123")
    bad = [*tampered(genuine), foreign]
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as client:
        responses = []
        for token in bad:
            responses.append(await client.get(f"/unsubscribe/{token}"))
            responses.append(
                await client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
            )
    assert {r.status_code for r in responses} == {400}
    assert len({r.text for r in responses}) == 1, "the page must not tell what was wrong"
    for response in responses:
        assert_private_headers(response)
    assert '<html lang="en">' in responses[0].text
    assert 'lang="nl"' in responses[0].text and 'lang="fr"' in responses[0].text
    assert await opt_outs(pg) == []
    assert await audit_rows(pg) == []


@pytest.mark.parametrize(
    ("contact", "label"),
    [
        ("mailto:privacy@acme.example", "privacy@acme.example"),
        ("https://acme.example/privacy?from=unsubscribe", "https://acme.example/privacy"),
    ],
    ids=["mailto", "https"],
)
async def test_the_invalid_link_page_shows_the_privacy_contact(
    settings: Settings, contact: str, label: str
) -> None:
    local = settings.model_copy(update={"privacy_contact": contact})
    async with serving(local) as base, httpx.AsyncClient(base_url=base) as client:
        page = await client.get("/unsubscribe/not-a-token")
    assert page.status_code == 400
    escaped = contact.replace("&", "&amp;")
    link = f'<a href="{escaped}">{label}</a>'
    assert page.text.count(link) == 3  # in English, Dutch and French
    assert "contact the sender" not in page.text


async def test_without_a_privacy_contact_the_invalid_link_page_names_the_sender(
    settings: Settings,
) -> None:
    assert settings.privacy_contact is None
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as client:
        page = await client.get("/unsubscribe/not-a-token")
    assert page.status_code == 400
    assert "<a " not in page.text
    assert "please contact the sender of the e-mail." in page.text
    assert "neem contact op met de afzender van de e-mail" in page.text.lower()
    assert "contactez l&#39;expéditeur de l&#39;e-mail." in page.text


@pytest.mark.parametrize(
    "value",
    ["javascript:alert(1)", "http://acme.example/privacy", "privacy@acme.example", "mailto:x"],
)
async def test_a_privacy_contact_that_is_not_mailto_or_https_is_refused_at_start_up(
    settings: Settings, value: str
) -> None:
    port = str(embedded.free_port())
    done = await cli(settings, "web", "--port", port, env={"PRIVACY_CONTACT": value}, timeout=30)
    assert done.code == 1, done
    assert done.stderr.splitlines() == [
        "Error: PRIVACY_CONTACT: must be a mailto: address (mailto:privacy@example.com) "
        "or an https:// URL"
    ]


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("Acme Research", "des enquêtes d&#39;Acme Research"),
        ("Hermès", "des enquêtes d&#39;Hermès"),
        ("Globex", "des enquêtes de Globex"),
    ],
)
async def test_french_pages_elide_de_before_the_clients_name(
    pg: asyncpg.Pool, settings: Settings, name: str, phrase: str
) -> None:
    await add_client(pg, "acme", name)
    token = token_for(settings, ANN, await token_id(pg, "acme"), locale="fr")
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as client:
        asked = await client.get(f"/unsubscribe/{token}")
        done = await client.post(f"/unsubscribe/{token}", data={"confirm": "yes"})
    assert (asked.status_code, done.status_code) == (200, 200)
    assert f"recevoir d&#39;invitations à {phrase}" in asked.text
    assert f"Vous ne recevrez plus d&#39;invitations à {phrase}." in done.text
    assert "de Acme" not in asked.text + done.text and "de Hermès" not in asked.text


async def test_key_rotation_old_key_works_while_listed_and_not_after(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    await add_client(pg, "acme")
    old_token = token_for(settings, ANN, await token_id(pg, "acme"))
    rotated = settings.model_copy(
        update={"unsubscribe_secrets": SecretStr("test-signing-key-2,test-signing-key-1")}
    )
    retired = settings.model_copy(update={"unsubscribe_secrets": SecretStr("test-signing-key-2")})
    one_click = {"List-Unsubscribe": "One-Click"}
    async with serving(retired) as base, httpx.AsyncClient(base_url=base) as client:
        refused = await client.post(f"/unsubscribe/{old_token}", data=one_click)
    assert refused.status_code == 400
    assert await opt_outs(pg) == []
    async with serving(rotated) as base, httpx.AsyncClient(base_url=base) as client:
        accepted = await client.post(f"/unsubscribe/{old_token}", data=one_click)
        new_token = token_for(rotated, ANN, None)
        assert rotated.signing_keys()[0] == b"test-signing-key-2"
        marketing = await client.post(f"/unsubscribe/{new_token}", data=one_click)
    assert accepted.status_code == marketing.status_code == 200
    assert await opt_outs(pg) == [("acme", None, "one-click"), ("marketing", None, "one-click")]


def closed_database_url() -> str:
    return f"postgresql://postgres@127.0.0.1:{embedded.free_port()}/survey"


async def test_postgres_down_queues_the_click_and_the_job_records_it(
    pg: asyncpg.Pool, settings: Settings, logs: list[dict[str, Any]]
) -> None:
    await add_client(pg, "acme", "Acme Research")
    token = token_for(settings, ANN, await token_id(pg, "acme"), locale="fr")
    async with (
        serving(settings, database_url=closed_database_url()) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        page = await client.get(f"/unsubscribe/{token}")
        first = await client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
        second = await client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
        health = await client.get("/healthz")
    # The page still shows, with a generic name; the clicks are queued, not lost.
    assert page.status_code == 200 and "cette organisation" in page.text
    assert first.status_code == second.status_code == 202
    assert "en cours de traitement" in first.text
    assert_private_headers(first)
    assert health.status_code == 200
    assert health.json() == {
        "status": "degraded",
        "database": False,
        "queue": True,
        "reasons": {"database": "ConnectionRefusedError"},
    }
    assert await opt_outs(pg) == []
    assert "opt_out.queued" in {e["event"] for e in logs}

    await run_workers(settings)
    assert await opt_outs(pg) == [("acme", None, "one-click")]
    assert await audit_rows(pg) == [("opt_out", "client:acme", "recipient", "one-click")]
    # Recorded in Postgres: no longer held in Redis.
    assert await held_clicks(settings) == set()


async def held_clicks(settings: Settings) -> set[bytes]:
    assert settings.redis_url is not None
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        return set(await client.smembers(held_optouts.KEY))  # type: ignore[misc]
    finally:
        await client.aclose()


async def test_a_click_queued_while_postgres_is_down_is_honoured_before_it_is_recorded(
    pg: asyncpg.Pool, settings: Settings, smtp: tuple[RecordingHandler, int]
) -> None:
    # The person clicks during an outage and is told it worked; Postgres comes back and a
    # campaign goes out before the queued job (retrying with its backoff) has recorded it.
    await add_client(pg, "acme", "Acme Research")
    token = token_for(settings, ANN, await token_id(pg, "acme"))
    async with (
        serving(settings, database_url=closed_database_url()) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        clicked = await client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert clicked.status_code == 202
    assert settings.redis_url is not None
    client_ = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        # The job waits out its backoff: take it off the queue for now.
        assert await client_.zcard("arq:queue") == 1
        await client_.delete("arq:queue")
    finally:
        await client_.aclose()
    report = await launch(pg, settings, csv_of(ANN, "bob@example.com"))
    await run_workers(settings)
    rows = await pg.fetch(
        "SELECT email, state, reason FROM invitations WHERE campaign_id = $1", report.campaign_id
    )
    assert {r["email"]: (r["state"], r["reason"]) for r in rows} == {
        ANN: ("suppressed", "client_opt_out"),
        "bob@example.com": ("sent", None),
    }
    assert received_by(smtp[0].messages) == {"bob@example.com": 1}
    assert await opt_outs(pg) == []
    assert len(await held_clicks(settings)) == 1


async def test_a_redis_that_would_forget_a_click_is_not_trusted_with_it(
    settings: Settings,
) -> None:
    # Debian's default Redis here: no append-only file, so a restart loses what it holds.
    token = token_for(settings, ANN, None)
    with debian_redis() as port:
        async with (
            serving(
                settings,
                database_url=closed_database_url(),
                redis_url=f"redis://127.0.0.1:{port}/0",
            ) as base,
            httpx.AsyncClient(base_url=base) as client,
        ):
            clicked = await client.post(
                f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}
            )
        plain = redis.Redis(port=port)
        try:
            assert plain.dbsize() == 0
        finally:
            plain.close()
    assert clicked.status_code == 503


async def test_postgres_and_redis_down_answers_503_try_again(settings: Settings) -> None:
    token = token_for(settings, ANN, None, locale="nl")
    async with (
        serving(
            settings,
            database_url=closed_database_url(),
            redis_url=f"redis://127.0.0.1:{embedded.free_port()}/0",
        ) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        page = await client.get(f"/unsubscribe/{token}")
        response = await client.post(f"/unsubscribe/{token}", data={"confirm": "yes"})
        health = await client.get("/healthz")
    assert page.status_code == 200  # the app starts and answers with both down
    assert response.status_code == 503
    assert "Probeer het" in response.text
    assert_private_headers(response)
    assert health.status_code == 503
    assert health.json() == {
        "status": "down",
        "database": False,
        "queue": False,
        "reasons": {"database": "ConnectionRefusedError", "queue": "ConnectionError"},
    }


@pytest.mark.parametrize(
    ("bad_database_url", "bad_redis_url", "reasons"),
    [
        (
            "postgresql://survey:s3cret@db.internal:notaport/survey",
            "garbage",
            {
                "database": "DATABASE_URL: the port is not a number from 1 to 65535",
                "queue": "REDIS_URL: not a redis://, rediss:// or unix:// URL",
            },
        ),
        (
            "garbage",
            "redis://:s3cret@cache.internal:6379/zero",
            {
                "database": "DATABASE_URL: not a postgresql:// URL",
                "queue": "REDIS_URL: the database is not a number",
            },
        ),
    ],
)
async def test_unusable_urls_are_503_with_reasons_never_500(
    settings: Settings, bad_database_url: str, bad_redis_url: str, reasons: dict[str, str]
) -> None:
    token = token_for(settings, ANN, None)
    async with (
        serving(settings, database_url=bad_database_url, redis_url=bad_redis_url) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        health = await client.get("/healthz")
        page = await client.get(f"/unsubscribe/{token}")
        clicked = await client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert health.status_code == 503
    assert health.json() == {
        "status": "down",
        "database": False,
        "queue": False,
        "reasons": reasons,
    }
    assert "s3cret" not in health.text
    assert page.status_code == 200
    assert clicked.status_code == 503


async def test_a_usable_database_with_an_unusable_redis_url_is_degraded(
    settings: Settings,
) -> None:
    async with (
        serving(settings, redis_url="garbage") as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        health = await client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {
        "status": "degraded",
        "database": True,
        "queue": False,
        "reasons": {"queue": "REDIS_URL: not a redis://, rediss:// or unix:// URL"},
    }


async def test_healthz_and_unknown_paths_carry_the_headers(settings: Settings) -> None:
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as client:
        health = await client.get("/healthz")
        missing = await client.get("/nothing-here")
        wrong_method = await client.put("/unsubscribe/abc")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "database": True, "queue": True, "reasons": {}}
    assert missing.status_code == 404
    assert wrong_method.status_code == 405
    for response in (health, missing, wrong_method):
        assert_private_headers(response)


async def test_request_log_lines_name_the_route_not_the_path(
    pg: asyncpg.Pool, settings: Settings, logs: list[dict[str, Any]]
) -> None:
    await add_client(pg, "acme")
    token = token_for(settings, ANN, await token_id(pg, "acme"))
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as client:
        await client.get(f"/unsubscribe/{token}")
        await client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    requests = [e for e in logs if e["event"] == "http.request"]
    assert [(e["method"], e["route"], e["status"]) for e in requests] == [
        ("GET", "unsubscribe_page", 200),
        ("POST", "unsubscribe", 200),
    ]
    recorded = next(e for e in logs if e["event"] == "opt_out.recorded")
    assert recorded["scope"] == "client:acme"
    assert recorded["source"] == "one-click"
    assert len(str(recorded["recipient"])) == 16


async def test_a_trailing_slash_is_a_404_never_a_redirect(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    await add_client(pg, "acme")
    token = token_for(settings, ANN, await token_id(pg, "acme"))
    hostile = {"host": "evil.example"}
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as client:
        responses = [
            await client.get(f"/unsubscribe/{token}/", headers=hostile),
            await client.post(
                f"/unsubscribe/{token}/",
                data={"List-Unsubscribe": "One-Click"},
                headers=hostile,
            ),
            await client.get("/healthz/", headers=hostile),
        ]
    for response in responses:
        assert response.status_code == 404
        assert "evil.example" not in response.text
        assert_private_headers(response)  # no Location header either
    assert await opt_outs(pg) == []


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("application/x-www-form-urlencoded", b"List-Unsubscribe=One-Click", True),
        ("application/x-www-form-urlencoded; charset=utf-8", b"List-Unsubscribe=One-Click", True),
        ("application/x-www-form-urlencoded", b"List-Unsubscribe=Other", False),
        ("application/x-www-form-urlencoded", b"confirm=yes", False),
        (multipart_one_click()[1], multipart_one_click()[0], True),
        (multipart_one_click("other")[1], multipart_one_click()[0], False),
        ("multipart/form-data", b"garbage", False),
        ("text/plain", b"List-Unsubscribe=One-Click", False),
        ("", b"", False),
    ],
)
def test_is_one_click(content_type: str, body: bytes, expected: bool) -> None:
    assert unsubscribe.is_one_click(content_type, body) is expected
