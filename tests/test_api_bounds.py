"""The client API's bounds on what a launch may hold (a JSON body's size, a recipient's
fields, a campaign's name), how a JSON launch names its recipients, and answers that are
what the OpenAPI document declares; on the real web app, Postgres and Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from openapi_schema_validator import OAS31Validator

from tests.support.pipeline import add_client
from tests.support.web import cli, launch_args, private_logs, serving
from worker import apikeys, imports
from worker.settings import Settings

SURVEY = "https://survey.test/s"


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    with private_logs() as captured:
        yield captured


@pytest.fixture
async def key(pg: asyncpg.Pool) -> dict[str, str]:
    await add_client(pg, "acme")
    async with pg.acquire() as conn:
        _, made = await apikeys.create(conn, "acme", name="test")
    return {"Authorization": f"Bearer {made}"}


def launch(recipients: list[dict[str, str]], **fields: Any) -> dict[str, Any]:
    return {"template": "invitation", "survey_url": SURVEY, "recipients": recipients, **fields}


async def test_a_json_body_over_its_own_limit_is_413_and_creates_nothing(
    pg: asyncpg.Pool, settings: Settings, key: dict[str, str]
) -> None:
    recipients = [{"email": f"p{i}@example.com", "first_name": "Ann"} for i in range(400)]
    # The CSV upload limit stays where it is; JSON has a lower one of its own.
    limits = {"api_json_max_bytes": 10_000, "api_max_upload_bytes": 1_000_000}
    async with (
        serving(settings.model_copy(update=limits)) as base,
        httpx.AsyncClient(base_url=base, headers=key) as http,
    ):
        big = await http.post("/v1/campaigns", json=launch(recipients))
        small = await http.post("/v1/campaigns", json=launch(recipients[:50]))
        upload = await http.post(
            "/v1/campaigns",
            data={"template": "invitation", "survey_url": SURVEY},
            files={
                "recipients": (
                    "people.csv",
                    "email\n" + "".join(f"{r['email']}\n" for r in recipients),
                    "text/csv",
                )
            },
        )
    assert big.status_code == 413, big.text
    assert big.json() == {
        "error": "the request body is over 10000 bytes (API_JSON_MAX_BYTES): "
        "send more recipients as a CSV upload"
    }
    assert small.status_code == 201, small.text
    assert small.json()["imported"] == 50
    assert upload.status_code == 201, upload.text
    assert upload.json()["imported"] == 400
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 2


@pytest.mark.parametrize(
    ("recipients", "error"),
    [
        (
            [
                {"email": "ann@example.com"},
                {"email": "bob@example.com", **{f"v{i}": "x" for i in range(100)}},
            ],
            f"recipient 2 has 101 fields; at most {imports.MAX_COLUMNS}",
        ),
        (
            [{"email": f"p{i}@example.com", f"v{i}": "x"} for i in range(150)],
            f"the recipients name more than {imports.MAX_COLUMNS} distinct fields "
            "(from recipient 100 on)",
        ),
    ],
)
async def test_a_json_recipient_with_too_many_fields_is_refused(
    pg: asyncpg.Pool,
    settings: Settings,
    key: dict[str, str],
    recipients: list[dict[str, str]],
    error: str,
) -> None:
    async with serving(settings) as base, httpx.AsyncClient(base_url=base, headers=key) as http:
        answer = await http.post("/v1/campaigns", json=launch(recipients))
    assert answer.status_code == 400, answer.text
    assert answer.json() == {"error": error}
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_a_csv_with_too_many_columns_is_refused(
    pg: asyncpg.Pool, settings: Settings, key: dict[str, str]
) -> None:
    header = ",".join(["email", *(f"v{i}" for i in range(100))])
    row = ",".join(["ann@example.com", *("x" for _ in range(100))])
    async with serving(settings) as base, httpx.AsyncClient(base_url=base, headers=key) as http:
        answer = await http.post(
            "/v1/campaigns",
            data={"template": "invitation", "survey_url": SURVEY},
            files={"recipients": ("people.csv", f"{header}\n{row}\n", "text/csv")},
        )
    assert answer.status_code == 400, answer.text
    assert answer.json() == {
        "error": f"the header row has 101 columns; at most {imports.MAX_COLUMNS}"
    }
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_a_json_launch_names_rejected_recipients_by_position(
    pg: asyncpg.Pool, settings: Settings, key: dict[str, str]
) -> None:
    async with serving(settings) as base, httpx.AsyncClient(base_url=base, headers=key) as http:
        # A value with a line break makes recipient 1 two lines of the import's CSV.
        mixed = await http.post(
            "/v1/campaigns",
            json=launch(
                [
                    {"email": "ann@example.com", "first_name": "A\nnn"},
                    {"email": "not an address"},
                    {"email": "bob@example.com"},
                ]
            ),
        )
        none = await http.post(
            "/v1/campaigns",
            json=launch([{"email": "bad"}, {"email": "worse@"}]),
        )
    assert mixed.status_code == 201, mixed.text
    rejected = mixed.json()["rejected"]
    assert [r["recipient"] for r in rejected] == [1, 2]
    assert all(set(r) == {"recipient", "reason"} for r in rejected)
    assert rejected[1]["reason"].startswith("invalid address")
    assert none.status_code == 400, none.text
    error = none.json()["error"]
    assert error.startswith(
        "no valid recipient in `recipients`; nothing was launched (recipient 1: "
    )
    assert "; recipient 2: " in error
    assert "line" not in error
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 1


async def test_campaign_names_are_at_most_200_characters(
    pg: asyncpg.Pool, settings: Settings, key: dict[str, str]
) -> None:
    filename = "q" * 941 + ".csv"
    async with serving(settings) as base, httpx.AsyncClient(base_url=base, headers=key) as http:
        uploaded = await http.post(
            "/v1/campaigns",
            data={"template": "invitation", "survey_url": SURVEY},
            files={"recipients": (filename, b"email\nann@example.com\n", "text/csv")},
        )
        named = await http.post(
            "/v1/campaigns", json=launch([{"email": "bob@example.com"}], name="n" * 201)
        )
    assert uploaded.status_code == 201, uploaded.text
    assert named.status_code == 400, named.text
    assert named.json() == {"error": "name: String should have at most 200 characters"}
    assert await pg.fetchval("SELECT name FROM campaigns") == "q" * 195 + "….csv"


async def test_launch_refuses_a_name_over_200_characters(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    await add_client(pg, "acme")
    recipients = tmp_path / "people.csv"
    recipients.write_text("email\nann@example.com\n")
    refused = await cli(settings, *launch_args(recipients), "--name", "n" * 201)
    assert refused.code == 1
    assert refused.stderr.strip() == "Error: --name must be at most 200 characters"
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 0


def conforms(document: dict[str, Any], path: str, method: str, answer: httpx.Response) -> None:
    """Raise unless `answer`'s body is what the document declares for its status."""
    declared = document["paths"][path][method]["responses"][str(answer.status_code)]
    schema = declared["content"]["application/json"]["schema"]
    OAS31Validator({**schema, "components": document["components"]}).validate(answer.json())


async def test_answers_are_what_the_openapi_document_declares(
    settings: Settings, key: dict[str, str]
) -> None:
    async with serving(settings) as base, httpx.AsyncClient(base_url=base, headers=key) as http:
        document = (await http.get("/v1/openapi.json")).json()
        created = await http.post(
            "/v1/campaigns",
            json=launch(
                [{"email": "ann@example.com"}, {"email": "broken"}],
                reminders=2,
                reminder_interval="3d",
            ),
        )
        campaign_id = created.json()["campaign_id"]
        status = await http.get(f"/v1/campaigns/{campaign_id}")
        paused = await http.post(f"/v1/campaigns/{campaign_id}/pause")
        uploaded = await http.post(
            "/v1/campaigns",
            data={"template": "invitation", "survey_url": SURVEY},
            files={"recipients": ("people.csv", b"email\nbroken\nbob@example.com\n", "text/csv")},
        )
    conforms(document, "/campaigns", "post", created)
    conforms(document, "/campaigns", "post", uploaded)
    conforms(document, "/campaigns/{campaign_id}", "get", status)
    conforms(document, "/campaigns/{campaign_id}/pause", "post", paused)
    # The declared answer holds everything the status carries: the reminder rounds too.
    assert [r["round"] for r in status.json()["reminders"]] == [1, 2]
    declared = document["components"]["schemas"]["StatusAnswer"]
    assert set(declared["properties"]) == set(status.json())
