"""The client API and the feed with the database roles' grants alone (sql/002, sql/007):
login users made as the README tells operators to."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.support.pipeline import add_client
from tests.support.web import cli, serving
from tests.test_api import bearer, campaign_json
from worker.settings import Settings

LoginUser = Callable[[str], Awaitable[str]]


@pytest.fixture
async def login_user(database_url: str) -> AsyncIterator[LoginUser]:
    admin = await asyncpg.connect(database_url)
    made: list[str] = []

    async def create(role: str) -> str:
        user = f"t_{role}_{uuid.uuid4().hex[:8]}"
        await admin.execute(f"CREATE ROLE {user} LOGIN IN ROLE {role}")
        made.append(user)
        scheme, _, rest = database_url.partition("://")
        return f"{scheme}://{user}@{rest.partition('@')[2]}"

    try:
        yield create
    finally:
        for user in made:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", user
            )
            await admin.execute(f"DROP ROLE IF EXISTS {user}")
        await admin.close()


async def test_the_api_acts_as_the_worker_role_and_the_web_role_serves_the_rest(
    pg: asyncpg.Pool, settings: Settings, login_user: LoginUser, tmp_path: Path
) -> None:
    worker_url, web_url = await login_user("survey_worker"), await login_user("survey_web")
    await add_client(pg, "acme")
    made = await cli(
        settings, "client", "key", "create", "acme", "--json", env={"DATABASE_URL": worker_url}
    )
    assert made.code == 0, made.stderr
    key = json.loads(made.stdout)["key"]
    web_settings = settings.model_copy(update={"database_url": web_url})
    async with (
        serving(web_settings.model_copy(update={"api_database_url": worker_url})) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        # With an Idempotency-Key, the launch keeps its digest and a retry compares it.
        keyed = {**bearer(key), "Idempotency-Key": "roles-1"}
        created = await http.post(
            "/v1/campaigns", json=campaign_json("ann@example.com"), headers=keyed
        )
        assert created.status_code == 201, created.text
        campaign_id = created.json()["campaign_id"]
        retried = await http.post(
            "/v1/campaigns", json=campaign_json("ann@example.com"), headers=keyed
        )
        assert (retried.status_code, retried.json()["campaign_id"]) == (200, campaign_id)
        status = await http.get(f"/v1/campaigns/{campaign_id}", headers=bearer(key))
        paused = await http.post(f"/v1/campaigns/{campaign_id}/pause", headers=bearer(key))
        cancelled = await http.post(f"/v1/campaigns/{campaign_id}/cancel", headers=bearer(key))
        feed = await http.get("/v1/opt-outs", headers=bearer(key))
    assert status.status_code == paused.status_code == cancelled.status_code == 200
    assert status.json()["total"] == 1
    assert cancelled.json()["status"] == "cancelled"
    assert feed.status_code == 200
    dropped = await cli(
        settings, "feed", "acme", "--output", str(tmp_path), env={"DATABASE_URL": worker_url}
    )
    assert dropped.code == 0, dropped.stderr


async def test_the_web_role_alone_reads_the_feed_and_refuses_launches_with_503(
    pg: asyncpg.Pool, settings: Settings, login_user: LoginUser
) -> None:
    web_url = await login_user("survey_web")
    await add_client(pg, "acme")
    made = await cli(settings, "client", "key", "create", "acme", "--json")
    key = json.loads(made.stdout)["key"]
    web_settings = settings.model_copy(update={"database_url": web_url})
    async with serving(web_settings) as base, httpx.AsyncClient(base_url=base) as http:
        feed = await http.get("/v1/opt-outs", headers=bearer(key))
        launch = await http.post(
            "/v1/campaigns", json=campaign_json("ann@example.com"), headers=bearer(key)
        )
    assert feed.status_code == 200
    assert launch.status_code == 503
    assert "API_DATABASE_URL" in launch.json()["error"]
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 0


@pytest.mark.parametrize("role", ["survey_worker", "survey_web"])
async def test_only_the_feed_function_reads_the_feeds_addresses(
    pg: asyncpg.Pool, role: str
) -> None:
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute(f"SET LOCAL ROLE {role}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("SELECT email FROM opt_out_feed")
    await pg.execute(
        "INSERT INTO clients (id, name, sender_email) VALUES ('acme', 'A', 'a@a.example')"
    )
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute(f"SET LOCAL ROLE {role}")
        assert await conn.fetch("SELECT * FROM opt_out_feed_page('acme', 0, 0, 10)") == []


async def test_the_web_role_cannot_make_keys(pg: asyncpg.Pool) -> None:
    await pg.execute(
        "INSERT INTO clients (id, name, sender_email) VALUES ('acme', 'A', 'a@a.example')"
    )
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL ROLE survey_web")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "INSERT INTO api_keys (client_id, key_hash) VALUES ('acme', $1)", bytes(32)
            )
