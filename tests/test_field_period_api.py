"""The field period through the client API: `POST /v1/campaigns` takes start_at, close_at,
window and per_day, `GET` shows them as `schedule`, and what cannot be used is a 422
naming the field, with nothing created."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest

from tests.support.pipeline import add_client
from tests.support.web import serving
from tests.test_api import bearer, campaign_json, make_key
from tests.test_api_bounds import conforms
from worker.settings import Settings


@pytest.fixture
async def key(pg: asyncpg.Pool) -> dict[str, str]:
    await add_client(pg, "acme")
    await pg.execute("UPDATE clients SET timezone = 'Europe/Amsterdam' WHERE id = 'acme'")
    return bearer(await make_key(pg, "acme"))


async def test_a_scheduled_campaign_through_the_api(
    pg: asyncpg.Pool, settings: Settings, key: dict[str, str]
) -> None:
    start = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    # Without an offset: in the client's time zone.
    close_local = (start + timedelta(days=7)).astimezone(UTC).replace(tzinfo=None)
    body = campaign_json(
        "a@example.com",
        "b@example.com",
        start_at=start.isoformat(),
        close_at=close_local.isoformat(),
        window="mon-fri 09:00-12:00; Mon-Fri 14:00-17:00",
        per_day=500,
    )
    body["recipients"][1]["timezone"] = "America/Chicago"
    async with serving(settings) as base, httpx.AsyncClient(base_url=base, headers=key) as http:
        created = await http.post("/v1/campaigns", json=body)
        assert created.status_code == 201, created.text
        campaign_id = created.json()["campaign_id"]
        status = await http.get(f"/v1/campaigns/{campaign_id}")
        document = (await http.get("/v1/openapi.json")).json()
    assert status.status_code == 200
    conforms(document, "/campaigns/{campaign_id}", "get", status)
    answer: dict[str, Any] = status.json()
    assert answer["status"] == "scheduled"
    close = close_local.replace(tzinfo=ZoneInfo("Europe/Amsterdam")).astimezone(UTC)
    assert answer["schedule"] == {
        "start_at": start.isoformat(),
        "close_at": close.isoformat(),
        "window": "Mon-Fri 09:00-12:00; Mon-Fri 14:00-17:00",
        "per_day": 500,
        "next_send_at": start.isoformat(),
    }
    zones = await pg.fetch("SELECT email, timezone FROM invitations ORDER BY email")
    assert [(r["email"], r["timezone"]) for r in zones] == [
        ("a@example.com", None),
        ("b@example.com", "America/Chicago"),
    ]


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"window": "Mon-Fry 09:00-17:00"}, "window: 'Fry' is not a day"),
        ({"window": "daily 25:00-26:00"}, "window: 25:00 is not a time of day"),
        ({"window": "daily 12:00-12:00"}, "window: 'daily 12:00-12:00' is an empty range"),
        ({"per_day": 0}, "per_day must be 1 or more"),
        ({"per_day": -1}, "per_day must be 1 or more"),
        (
            {"start_at": "2099-01-02T10:00Z", "close_at": "2099-01-02T09:00Z"},
            "close_at must be after start_at",
        ),
        ({"start_at": "soon"}, "start_at: 'soon' is not an ISO 8601 date-time"),
    ],
)
async def test_a_field_period_that_cannot_be_used_is_a_422_naming_the_field(
    pg: asyncpg.Pool, settings: Settings, key: dict[str, str], fields: dict[str, Any], says: str
) -> None:
    async with serving(settings) as base, httpx.AsyncClient(base_url=base, headers=key) as http:
        refused = await http.post("/v1/campaigns", json=campaign_json("a@example.com", **fields))
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"].startswith(says), refused.json()
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_an_unknown_time_zone_rejects_its_recipient(
    settings: Settings, key: dict[str, str]
) -> None:
    body = campaign_json("a@example.com", "b@example.com")
    body["recipients"][0]["timezone"] = "Moon/Tranquility"
    async with serving(settings) as base, httpx.AsyncClient(base_url=base, headers=key) as http:
        created = await http.post("/v1/campaigns", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["imported"] == 1
    assert created.json()["rejected"] == [
        {
            "recipient": 1,
            "reason": "timezone: 'Moon/Tranquility' is not a time zone (an IANA name, e.g. "
            "Europe/Amsterdam)",
        }
    ]
