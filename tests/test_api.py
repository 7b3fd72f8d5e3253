"""The client API (/v1) on the real web app: uvicorn, Postgres and Redis, keys made as
`client key create` makes them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from openapi_spec_validator import validate

from tests.support.pipeline import add_client
from tests.support.web import email_hash, private_logs, serving
from worker import apikeys, campaigns, optouts, privacy, relay_config
from worker.settings import Settings
from worker.suppression import Scope

SURVEY = "https://survey.test/s"


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    with private_logs() as captured:
        yield captured


async def make_key(pool: asyncpg.Pool, client_id: str) -> str:
    async with pool.acquire() as conn:
        _, key = await apikeys.create(conn, client_id, name="test")
    return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def keys(pg: asyncpg.Pool) -> dict[str, str]:
    await add_client(pg, "acme")
    await add_client(pg, "globex")
    return {"acme": await make_key(pg, "acme"), "globex": await make_key(pg, "globex")}


def campaign_json(*emails: str, **fields: Any) -> dict[str, Any]:
    return {
        "template": "invitation",
        "survey_url": SURVEY,
        "recipients": [{"email": e, "first_name": "Ann"} for e in emails],
        **fields,
    }


async def test_a_client_launches_watches_and_controls_only_its_own_campaigns(
    pg: asyncpg.Pool, settings: Settings, keys: dict[str, str]
) -> None:
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as http:
        created = await http.post(
            "/v1/campaigns",
            json=campaign_json("ann@example.com", "bob@example.com", "not an address"),
            headers=bearer(keys["acme"]),
        )
        assert created.status_code == 201, created.text
        answer = created.json()
        campaign_id = answer["campaign_id"]
        assert answer == {
            "campaign_id": campaign_id,
            "imported": 2,
            "rejected": [{"recipient": 3, "reason": answer["rejected"][0]["reason"]}],
            "existing": False,
            "queued": True,
        }
        assert answer["rejected"][0]["reason"].startswith("invalid address")
        status = await http.get(f"/v1/campaigns/{campaign_id}", headers=bearer(keys["acme"]))
        async with pg.acquire() as conn:
            report = await campaigns.status_report(conn, campaign_id)
        expected = (
            await campaigns.with_relays_at(
                report, settings.redis_url, relay_config.relays(settings)
            )
        ).as_json()
        # What `status --json` says, its relays included: the default relay, seen ok.
        assert status.status_code == 200 and status.json() == expected
        assert [r["name"] for r in expected["relays"]] == ["default"]
        # Another client's campaign is a 404, the same as one that does not exist.
        theirs = await http.get(f"/v1/campaigns/{campaign_id}", headers=bearer(keys["globex"]))
        missing = await http.get("/v1/campaigns/999999", headers=bearer(keys["globex"]))
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json() == missing.json() == {"error": "no such campaign"}
        for action in ("pause", "resume", "cancel"):
            other = await http.post(
                f"/v1/campaigns/{campaign_id}/{action}", headers=bearer(keys["globex"])
            )
            assert other.status_code == 404
        assert (await pg.fetchval("SELECT status FROM campaigns")) == "running"
        moves = []
        for action in ("pause", "pause", "resume", "cancel", "resume"):
            done = await http.post(
                f"/v1/campaigns/{campaign_id}/{action}", headers=bearer(keys["acme"])
            )
            assert done.status_code == 200
            moves.append((done.json()["status"], done.json()["changed"]))
    assert moves == [
        ("paused", True),
        ("paused", False),
        ("running", True),
        ("cancelled", True),
        ("cancelled", False),
    ]


async def test_idempotency_key_returns_the_first_campaign(
    pg: asyncpg.Pool, settings: Settings, keys: dict[str, str]
) -> None:
    headers = {**bearer(keys["acme"]), "Idempotency-Key": "order-42"}
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as http:
        first = await http.post(
            "/v1/campaigns", json=campaign_json("a@example.com"), headers=headers
        )
        again = await http.post(
            "/v1/campaigns", json=campaign_json("a@example.com"), headers=headers
        )
        # The key reused for other recipients: refused, nothing imported.
        reused = await http.post(
            "/v1/campaigns", json=campaign_json("b@example.com", "c@example.com"), headers=headers
        )
        # The same key of another client is another campaign.
        other = await http.post(
            "/v1/campaigns",
            json=campaign_json("a@example.com"),
            headers={**bearer(keys["globex"]), "Idempotency-Key": "order-42"},
        )
        bad = await http.post(
            "/v1/campaigns",
            json=campaign_json("a@example.com"),
            headers={**bearer(keys["acme"]), "Idempotency-Key": "has space"},
        )
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["campaign_id"] == first.json()["campaign_id"]
    assert again.json()["existing"] is True and again.json()["imported"] == 1
    assert reused.status_code == 422
    assert "idempotency key 'order-42' was first used for another launch" in reused.json()["error"]
    assert other.status_code == 201 and other.json()["campaign_id"] != first.json()["campaign_id"]
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["error"]
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 2


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer swk_nonsense",
        "Basic YWNtZTpzZWNyZXQ=",
        "Bearer " + "swk_" + "A" * 43,
    ],
)
async def test_no_valid_key_is_401(
    settings: Settings, keys: dict[str, str], authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as http:
        answers = [
            await http.get("/v1/opt-outs", headers=headers),
            # Authenticated before the query is checked.
            await http.get("/v1/opt-outs?limit=0&after=nonsense", headers=headers),
            await http.get("/v1/campaigns/1", headers=headers),
            # Authenticated before the body is read: even malformed JSON is a 401.
            await http.post(
                "/v1/campaigns",
                content=b"{not json",
                headers={**headers, "content-type": "application/json"},
            ),
        ]
    for answer in answers:
        assert answer.status_code == 401
        assert answer.json()["error"].startswith("a valid API key is required")
        assert answer.headers["www-authenticate"].startswith("Bearer")


async def test_a_revoked_key_is_401_at_once_and_another_key_still_works(
    pg: asyncpg.Pool, settings: Settings, keys: dict[str, str]
) -> None:
    second = await make_key(pg, "acme")
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as http:
        before = await http.get("/v1/opt-outs", headers=bearer(keys["acme"]))
        key_id = await pg.fetchval("SELECT min(id) FROM api_keys WHERE client_id = 'acme'")
        async with pg.acquire() as conn:
            assert await apikeys.revoke(conn, key_id) is True
        after = await http.get("/v1/opt-outs", headers=bearer(keys["acme"]))
        rotated = await http.get("/v1/opt-outs", headers=bearer(second))
    assert before.status_code == 200
    assert after.status_code == 401
    assert rotated.status_code == 200
    used = await pg.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", key_id)
    assert used is not None


@pytest.mark.parametrize(
    ("content", "content_type", "reason"),
    [
        (b"{not json", "application/json", "malformed JSON"),
        (b"[]", "application/json", "JSON object"),
        (
            b'{"survey_url": "https://survey.test/s", "recipients": [{"email": "a@example.com"}]}',
            "application/json",
            "template",
        ),
        (b'{"template": "invitation", "recipients": []}', "application/json", "recipients"),
        (
            b'{"template": "invitation", "recipients": [{"email": 5}]}',
            "application/json",
            "recipients",
        ),
        (
            b'{"template": "invitation", "colour": "red",'
            b' "recipients": [{"email": "a@example.com"}]}',
            "application/json",
            "colour",
        ),
        (
            b'{"template": "invitation", "locale": "eng", "survey_url": "https://survey.test/s",'
            b' "recipients": [{"email": "a@example.com"}]}',
            "application/json",
            "locale",
        ),
        (
            b'{"template": "no-such-template", "survey_url": "https://survey.test/s",'
            b' "recipients": [{"email": "a@example.com"}]}',
            "application/json",
            "template",
        ),
        (
            b'{"template": "invitation", "survey_url": "javascript:alert(1)",'
            b' "recipients": [{"email": "a@example.com"}]}',
            "application/json",
            "survey_url",
        ),
        (
            b'{"template": "invitation", "survey_url": "https://survey.test/s",'
            b' "recipients": [{"email": "not an address"}]}',
            "application/json",
            "no valid recipient",
        ),
        (b"email\na@example.com\n", "text/csv", "Content-Type"),
        (b"--x\r\nbroken", "multipart/form-data; boundary=x", "multipart"),
        (
            b'--x\r\nContent-Disposition: form-data; name="template"\r\n\r\n'
            b"invitation\r\n--x--\r\n",
            "multipart/form-data; boundary=x",
            "recipients",
        ),
    ],
)
async def test_bad_input_is_400_with_a_reason_and_creates_nothing(
    pg: asyncpg.Pool,
    settings: Settings,
    keys: dict[str, str],
    content: bytes,
    content_type: str,
    reason: str,
) -> None:
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as http:
        answer = await http.post(
            "/v1/campaigns",
            content=content,
            headers={**bearer(keys["acme"]), "content-type": content_type},
        )
    assert answer.status_code == 400, answer.text
    assert reason in answer.json()["error"]
    # The API's fields, not the command line's flags.
    assert "--survey-url" not in answer.json()["error"]
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 0


@pytest.mark.parametrize(
    ("csv_text", "reason"),
    [
        ("name\nAnn\n", "no `email` column"),
        ("", "empty"),
        ("email,email\na@example.com,b@example.com\n", "same name"),
    ],
)
async def test_a_bad_csv_upload_is_400(
    pg: asyncpg.Pool, settings: Settings, keys: dict[str, str], csv_text: str, reason: str
) -> None:
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as http:
        answer = await http.post(
            "/v1/campaigns",
            data={"template": "invitation", "survey_url": SURVEY},
            files={"recipients": ("people.csv", csv_text.encode(), "text/csv")},
            headers=bearer(keys["acme"]),
        )
    assert answer.status_code == 400, answer.text
    assert reason in answer.json()["error"]
    # The API's fields, not the command line's flags.
    assert "--survey-url" not in answer.json()["error"]
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_a_csv_upload_reports_bad_lines_like_launch(
    pg: asyncpg.Pool, settings: Settings, keys: dict[str, str]
) -> None:
    csv_text = "email,first_name\nann@example.com,Ann\nbroken,Bob\nann@example.com,Ann\n"
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as http:
        answer = await http.post(
            "/v1/campaigns",
            data={"template": "invitation", "survey_url": SURVEY, "name": "spring"},
            files={"recipients": ("people.csv", csv_text.encode(), "text/csv")},
            headers=bearer(keys["acme"]),
        )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["imported"] == 1
    assert [r["line"] for r in body["rejected"]] == [3, 4]
    assert body["rejected"][1]["reason"] == "duplicate address (imported once)"
    assert await pg.fetchval("SELECT name FROM campaigns") == "spring"


async def test_an_upload_over_the_limit_is_413_declared_or_streamed(
    pg: asyncpg.Pool, settings: Settings, keys: dict[str, str]
) -> None:
    big = b"email\n" + b"".join(f"p{i}@example.com\n".encode() for i in range(1000))

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    async with (
        serving(
            settings.model_copy(update={"api_max_upload_bytes": 5000, "api_json_max_bytes": 5000})
        ) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        declared = await http.post(
            "/v1/campaigns",
            data={"template": "invitation", "survey_url": SURVEY},
            files={"recipients": ("people.csv", big, "text/csv")},
            headers=bearer(keys["acme"]),
        )
        # No Content-Length: chunked, counted as it arrives.
        streamed = await http.post(
            "/v1/campaigns",
            content=chunks(),
            headers={**bearer(keys["acme"]), "content-type": "application/json"},
        )
        small = await http.post(
            "/v1/campaigns", json=campaign_json("a@example.com"), headers=bearer(keys["acme"])
        )
    assert declared.status_code == streamed.status_code == 413
    assert "5000 bytes" in declared.json()["error"]
    assert small.status_code == 201
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 1


async def test_over_the_rate_is_429_per_key(settings: Settings, keys: dict[str, str]) -> None:
    async with (
        serving(settings.model_copy(update={"api_rate_limit": 3})) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        acme = [await http.get("/v1/opt-outs", headers=bearer(keys["acme"])) for _ in range(4)]
        globex = await http.get("/v1/opt-outs", headers=bearer(keys["globex"]))
    assert [a.status_code for a in acme] == [200, 200, 200, 429]
    assert 1 <= int(acme[3].headers["retry-after"]) <= 60
    assert globex.status_code == 200


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("after=nonsense", "after"),
        ("after=1-2-3", "after"),
        ("after=99999999999999999999-1", "after"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
    ],
)
async def test_a_bad_cursor_or_limit_is_400(
    settings: Settings, keys: dict[str, str], query: str, reason: str
) -> None:
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as http:
        answer = await http.get(f"/v1/opt-outs?{query}", headers=bearer(keys["acme"]))
    assert answer.status_code == 400, answer.text
    assert reason in answer.json()["error"]


@pytest.mark.parametrize("path", ["abc", "0", "-1", "1.5", "99999999999999999999", "\u0661"])
async def test_a_campaign_id_that_cannot_be_one_is_404(
    settings: Settings, keys: dict[str, str], path: str
) -> None:
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as http:
        got = await http.get(f"/v1/campaigns/{path}", headers=bearer(keys["acme"]))
        paused = await http.post(f"/v1/campaigns/{path}/pause", headers=bearer(keys["acme"]))
    assert got.status_code == paused.status_code == 404


async def test_the_feed_over_http_pages_each_clients_own_list(
    pg: asyncpg.Pool, settings: Settings, keys: dict[str, str]
) -> None:
    acme, globex = Scope("survey", "acme"), Scope("survey", "globex")
    async with pg.acquire() as conn:
        for i in range(5):
            address = f"p{i}@example.com"
            await optouts.add(
                conn,
                acme,
                email_hash=email_hash(settings, address),
                email=address,
                source="test",
                actor="test",
            )
        await optouts.add(
            conn,
            globex,
            email_hash=email_hash(settings, "g@example.com"),
            email="g@example.com",
            source="test",
            actor="test",
        )
        await privacy.resubscribe(
            conn, acme, email_hash=email_hash(settings, "p1@example.com"), actor="t", reason="r"
        )
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as http:
        pages = []
        cursor = ""
        while True:
            page = await http.get(
                "/v1/opt-outs", params={"after": cursor, "limit": 2}, headers=bearer(keys["acme"])
            )
            assert page.status_code == 200
            pages.append(page.json())
            if not page.json()["events"]:
                break
            cursor = page.json()["next_cursor"]
        theirs = (await http.get("/v1/opt-outs", headers=bearer(keys["globex"]))).json()
    events = [(e["kind"], e["email"]) for p in pages for e in p["events"]]
    assert events == [
        *(("opt_out", f"p{i}@example.com") for i in range(5)),
        ("resubscribe", "p1@example.com"),
    ]
    assert [len(p["events"]) for p in pages] == [2, 2, 2, 0]
    assert pages[-1]["next_cursor"] == cursor  # caught up: ask again with the same cursor
    assert all(e["at"].endswith("+00:00") for p in pages for e in p["events"])
    assert [(e["kind"], e["email"]) for e in theirs["events"]] == [("opt_out", "g@example.com")]


async def test_the_openapi_document_validates_and_describes_the_api(settings: Settings) -> None:
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as http:
        answer = await http.get("/v1/openapi.json")
    assert answer.status_code == 200
    document = answer.json()
    validate(document)
    assert set(document["paths"]) == {
        "/campaigns",
        "/campaigns/{campaign_id}",
        "/campaigns/{campaign_id}/pause",
        "/campaigns/{campaign_id}/resume",
        "/campaigns/{campaign_id}/cancel",
        "/campaigns/{campaign_id}/retry",
        "/opt-outs",
    }
    assert document["servers"] == [{"url": "/v1"}]
    body = document["paths"]["/campaigns"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert "HTTPBearer" in document["components"]["securitySchemes"]
    # Validation errors are 400s here, never FastAPI's default 422; a launch's 422 is a
    # reused Idempotency-Key.
    operations = [o for p in document["paths"].values() for o in p.values()]
    assert all("400" in o["responses"] for o in operations)
    assert {o["operationId"] for o in operations if "422" in o["responses"]} == {"create_campaign"}
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert {o["operationId"] for o in operations} == {
        "create_campaign",
        "campaign_status",
        "pause_campaign",
        "resume_campaign",
        "cancel_campaign",
        "retry_campaign",
        "opt_out_feed",
    }


async def test_postgres_unavailable_is_503_not_500(
    settings: Settings, keys: dict[str, str]
) -> None:
    async with (
        serving(
            settings.model_copy(update={"api_database_url": "postgresql://nobody@127.0.0.1:1/none"})
        ) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        answer = await http.get("/v1/opt-outs", headers=bearer(keys["acme"]))
    assert answer.status_code == 503
    assert answer.json()["error"].startswith("the database is unavailable")


async def test_a_hundred_thousand_recipients_upload_streams_into_one_campaign(
    pg: asyncpg.Pool, settings: Settings, keys: dict[str, str]
) -> None:
    total = 100_000
    boundary = "sw-upload-boundary"

    async def body() -> AsyncIterator[bytes]:
        # Sent as it is made (chunked, no Content-Length): neither side holds the file.
        for name, value in (("template", "invitation"), ("survey_url", SURVEY)):
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            ).encode()
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="recipients"; '
            'filename="big.csv"\r\nContent-Type: text/csv\r\n\r\nemail,first_name\n'
        ).encode()
        for start in range(0, total, 5000):
            yield "".join(
                f"person{i}@example.com,P{i}\n" for i in range(start, start + 5000)
            ).encode()
        yield f"\r\n--{boundary}--\r\n".encode()

    async with serving(settings) as base, httpx.AsyncClient(base_url=base, timeout=300) as http:
        answer = await http.post(
            "/v1/campaigns",
            content=body(),
            headers={
                **bearer(keys["acme"]),
                "content-type": f"multipart/form-data; boundary={boundary}",
            },
        )
        assert answer.status_code == 201, answer.text
        campaign_id = answer.json()["campaign_id"]
        status = await http.get(f"/v1/campaigns/{campaign_id}", headers=bearer(keys["acme"]))
    assert answer.json()["imported"] == total and answer.json()["rejected"] == []
    assert status.json()["total"] == total
    count = "SELECT count(*) FROM invitations WHERE campaign_id = $1"
    assert await pg.fetchval(count, campaign_id) == total
    assert await pg.fetchval("SELECT name FROM campaigns") == "big.csv"


async def test_reminders_are_launch_options_too(
    pg: asyncpg.Pool, settings: Settings, keys: dict[str, str]
) -> None:
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as http:
        json_launch = await http.post(
            "/v1/campaigns",
            json=campaign_json("a@example.com", reminders=2, reminder_interval="3d"),
            headers=bearer(keys["acme"]),
        )
        form_launch = await http.post(
            "/v1/campaigns",
            data={
                "template": "invitation",
                "survey_url": SURVEY,
                "reminders": "1",
                "reminder_interval": "12h",
            },
            files={"recipients": ("people.csv", b"email\nb@example.com\n", "text/csv")},
            headers=bearer(keys["acme"]),
        )
        bad = [
            await http.post(
                "/v1/campaigns",
                json=campaign_json("a@example.com", **fields),
                headers=bearer(keys["acme"]),
            )
            for fields in (
                {"reminders": 2, "reminder_interval": "soon"},
                {"reminders": 11, "reminder_interval": "1d"},
                {"reminders": 2},
            )
        ]
    assert json_launch.status_code == form_launch.status_code == 201
    rows = await pg.fetch(
        "SELECT reminders, extract(epoch FROM reminder_interval) AS s FROM campaigns ORDER BY id"
    )
    assert [(r["reminders"], r["s"]) for r in rows] == [(2, 3 * 86400), (1, 12 * 3600)]
    assert [b.status_code for b in bad] == [400, 400, 400]
    assert "reminder_interval" in bad[0].json()["error"]
    assert "reminders" in bad[1].json()["error"]
    assert bad[2].json()["error"] == "reminders needs reminder_interval, e.g. 3d"
