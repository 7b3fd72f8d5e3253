"""The client API and the feed with the database roles' grants alone (sql/002, sql/007,
sql/013): login users made as the README tells operators to."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.support.pipeline import add_client, opt_out
from tests.support.web import cli, serving
from tests.test_api import bearer, campaign_json
from tests.test_feed_drops import read_drop
from worker import apikeys, feed
from worker.settings import Settings
from worker.suppression import Scope

LoginUser = Callable[[str], Awaitable[str]]


async def feed_settled(pg: asyncpg.Pool) -> None:
    """Wait until every feed event is readable (below the snapshot's xmin): another test
    run sharing the embedded cluster may hold a transaction open for a moment."""
    settled = """SELECT coalesce(max(xid), 0)
                        < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
                 FROM opt_out_feed"""
    async with asyncio.timeout(30):
        while True:
            if await pg.fetchval(settled):
                return
            await asyncio.sleep(0.05)


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
    # Feed drops are not the worker's: its login reads no client's list, and writes nothing.
    drops = tmp_path / "drops"
    refused = await cli(
        settings, "feed", "acme", "--output", str(drops), env={"DATABASE_URL": worker_url}
    )
    assert refused.code == 1
    assert refused.stderr.strip().endswith("feed needs the feed_dropper role")
    assert not drops.exists()
    assert await pg.fetchval("SELECT count(*) FROM feed_drops") == 0


async def test_feed_drops_run_as_a_feed_dropper_login(
    pg: asyncpg.Pool, settings: Settings, login_user: LoginUser, tmp_path: Path
) -> None:
    dropper_url = await login_user("feed_dropper")
    await add_client(pg, "acme")
    await opt_out(pg, settings, "ann@example.com", Scope("survey", "acme"))
    await feed_settled(pg)
    dropped = await cli(
        settings,
        "feed",
        "acme",
        "--output",
        str(tmp_path),
        "--daily",
        "--json",
        env={"DATABASE_URL": dropper_url},
    )
    assert dropped.code == 0, dropped.stderr
    _, rows = read_drop(Path(json.loads(dropped.stdout)["manifest"]))
    assert [r[:2] for r in rows] == [["opt_out", "ann@example.com"]]
    # Not even the feed_dropper reads the lists themselves: only the feed, for a drop.
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL ROLE feed_dropper")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("SELECT email FROM client_opt_outs")


async def test_the_web_role_alone_reads_the_feed_and_refuses_launches_with_503(
    pg: asyncpg.Pool, settings: Settings, login_user: LoginUser
) -> None:
    web_url = await login_user("survey_web")
    await add_client(pg, "acme")
    await opt_out(pg, settings, "ann@example.com", Scope("survey", "acme"))
    await feed_settled(pg)
    made = await cli(settings, "client", "key", "create", "acme", "--json")
    key = json.loads(made.stdout)["key"]
    web_settings = settings.model_copy(update={"database_url": web_url})
    async with serving(web_settings) as base, httpx.AsyncClient(base_url=base) as http:
        feed = await http.get("/v1/opt-outs", headers=bearer(key))
        launch = await http.post(
            "/v1/campaigns", json=campaign_json("ann@example.com"), headers=bearer(key)
        )
    assert feed.status_code == 200
    assert [e["email"] for e in feed.json()["events"]] == ["ann@example.com"]
    assert launch.status_code == 503
    assert "API_DATABASE_URL" in launch.json()["error"]
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 0


@pytest.mark.parametrize("role", ["survey_worker", "survey_web"])
async def test_the_worker_and_web_roles_read_no_clients_feed_by_naming_the_client(
    pg: asyncpg.Pool, role: str
) -> None:
    await add_client(pg, "acme")
    for sql in (
        "SELECT email FROM opt_out_feed",
        "SELECT * FROM opt_out_feed_page('acme', 0, 0, 10)",
    ):
        async with pg.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {role}")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)


@pytest.mark.parametrize("role", ["survey_worker", "survey_web"])
async def test_the_feed_function_needs_an_active_key_of_that_very_client(
    pg: asyncpg.Pool, settings: Settings, role: str
) -> None:
    await add_client(pg, "acme")
    await add_client(pg, "globex")
    await opt_out(pg, settings, "gus@example.com", Scope("survey", "globex"))
    await feed_settled(pg)
    async with pg.acquire() as conn:
        _, acme_key = await apikeys.create(conn, "acme")
        _, globex_key = await apikeys.create(conn, "globex")
        revoked_id, revoked_key = await apikeys.create(conn, "globex")
        await apikeys.revoke(conn, revoked_id)
        stored_hash = apikeys.key_hash(globex_key).hex()
    for refused in (acme_key, None, "", revoked_key, stored_hash):
        async with pg.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {role}")
            with pytest.raises(feed.KeyRefused):
                await feed.page_for_key(conn, "globex", refused, feed.START, 10)  # type: ignore[arg-type]
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute(f"SET LOCAL ROLE {role}")
        page = await feed.page_for_key(conn, "globex", globex_key, feed.START, 10)
        acme = await feed.page_for_key(conn, "acme", acme_key, feed.START, 10)
    assert [e.email for e in page.events] == ["gus@example.com"]
    assert acme.events == []


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


async def test_the_daily_cron_drops_as_the_feed_login_never_as_the_workers(
    pg: asyncpg.Pool, settings: Settings, login_user: LoginUser, tmp_path: Path
) -> None:
    worker_url, dropper_url = await login_user("survey_worker"), await login_user("feed_dropper")
    await add_client(pg, "acme")
    await opt_out(pg, settings, "ann@example.com", Scope("survey", "acme"))
    await feed_settled(pg)
    drops = tmp_path / "drops"
    registered = await cli(
        settings,
        "feed",
        "acme",
        "--output",
        str(drops),
        "--daily",
        "--json",
        env={"DATABASE_URL": dropper_url},
    )
    assert json.loads(registered.stdout)["count"] == 1
    await opt_out(pg, settings, "bob@example.com", Scope("survey", "acme"))
    await feed_settled(pg)
    worker_pool = await asyncpg.create_pool(worker_url, min_size=1, max_size=1)
    try:
        alone = await feed.drop_feeds({"pool": worker_pool, "settings": settings})
        assert alone == {"drops": 0, "failed": 1}
        assert len(list(drops.glob("*.json"))) == 1
        with_login = settings.model_copy(update={"feed_database_url": dropper_url})
        dropped = await feed.drop_feeds({"pool": worker_pool, "settings": with_login})
    finally:
        await worker_pool.close()
    assert dropped == {"drops": 1, "failed": 0}
    _, rows = read_drop(sorted(drops.glob("*.json"))[1])
    assert [r[:2] for r in rows] == [["opt_out", "bob@example.com"]]
