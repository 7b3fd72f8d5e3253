"""The database roles of sql/002_roles.sql: only privacy_officer may remove or change an
opt-out; the worker and the web app can do their whole job with their own grants."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support.pipeline import add_client, csv_of, launch, opt_out, received_by, run_workers
from tests.support.smtp import RecordingHandler
from tests.support.web import cli, email_hash, private_logs, serving, token_for, token_id
from worker import db, privacy
from worker.errors import PermissionDenied
from worker.settings import Settings
from worker.suppression import Scope

ROLES = ("survey_worker", "survey_web", "privacy_officer")
OPT_OUT_TABLES = ("client_opt_outs", "marketing_opt_outs")
ACME = Scope("survey", "acme")
MARKETING = Scope("marketing", "")


def with_user(url: str, user: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}@{rest.partition('@')[2]}"


LoginUser = Callable[[str], Awaitable[str]]


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    with private_logs() as captured:
        yield captured


@pytest.fixture
async def login_user(database_url: str) -> AsyncIterator[LoginUser]:
    """Make login users that are members of a group role, as the README tells operators
    to; yields `create(role) -> database URL of a new user in that role`."""
    admin = await asyncpg.connect(database_url)
    made: list[str] = []

    async def create(role: str) -> str:
        user = f"t_{role}_{uuid.uuid4().hex[:8]}"
        await admin.execute(f"CREATE ROLE {user} LOGIN IN ROLE {role}")
        made.append(user)
        return with_user(database_url, user)

    try:
        yield create
    finally:
        for user in made:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", user
            )
            await admin.execute(f"DROP ROLE IF EXISTS {user}")
        await admin.close()


async def as_role(conn: asyncpg.Connection, role: str, sql: str, *args: object) -> None:
    """Run `sql` as `role` in a transaction that is always rolled back."""
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(f"SET LOCAL ROLE {role}")
        await conn.execute(sql, *args)
    finally:
        await tx.rollback()


async def test_group_roles_exist_and_cannot_log_in(pg: asyncpg.Pool) -> None:
    rows = await pg.fetch(
        "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY($1)", list(ROLES)
    )
    assert {r["rolname"]: r["rolcanlogin"] for r in rows} == dict.fromkeys(ROLES, False)


async def test_migrations_apply_where_the_roles_already_exist(database_url: str) -> None:
    # The roles exist cluster-wide (the test template made them): a new database of the
    # same cluster must still migrate from scratch.
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        conn = await asyncpg.connect(database_url.rpartition("/")[0] + "/" + name)
        try:
            applied = await db.migrate(conn)
            assert "002_roles.sql" in applied
            assert await db.migrate(conn) == []
        finally:
            await conn.close()
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


@pytest.mark.parametrize("role", ["survey_worker", "survey_web"])
@pytest.mark.parametrize("table", OPT_OUT_TABLES)
async def test_worker_and_web_may_add_but_not_remove_or_change_opt_outs(
    pg: asyncpg.Pool, settings: Settings, role: str, table: str
) -> None:
    await add_client(pg, "acme")
    key = email_hash(settings, "ann@example.com")
    client_list = table == "client_opt_outs"
    columns = "client_id, email_hash, source" if client_list else "email_hash, source"
    values = "'acme', $1, 'test'" if client_list else "$1, 'test'"
    async with pg.acquire() as conn:
        await as_role(conn, role, f"INSERT INTO {table} ({columns}) VALUES ({values})", key)
        await conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({values})", key)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await as_role(conn, role, f"DELETE FROM {table} WHERE email_hash = $1", key)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await as_role(conn, role, f"UPDATE {table} SET email = NULL")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await as_role(conn, role, f"TRUNCATE {table}")
        await as_role(conn, "privacy_officer", f"UPDATE {table} SET email = NULL")
        await as_role(conn, "privacy_officer", f"DELETE FROM {table} WHERE email_hash = $1", key)
    assert await pg.fetchval(f"SELECT count(*) FROM {table}") == 1


@pytest.mark.parametrize("role", ["survey_worker", "survey_web"])
@pytest.mark.parametrize("table", OPT_OUT_TABLES)
async def test_worker_and_web_cannot_read_the_addresses_on_opt_out_lists(
    pg: asyncpg.Pool, role: str, table: str
) -> None:
    async with pg.acquire() as conn:
        await as_role(conn, role, f"SELECT email_hash, source, created_at FROM {table}")
        for sql in (f"SELECT email FROM {table}", f"SELECT * FROM {table}"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await as_role(conn, role, sql)
        await as_role(conn, "privacy_officer", f"SELECT email FROM {table}")


@pytest.mark.parametrize("role", ["survey_worker", "survey_web"])
async def test_only_the_privacy_officer_exports_opt_out_lists(
    pg: asyncpg.Pool, settings: Settings, login_user: LoginUser, role: str
) -> None:
    url = await login_user(role)
    await add_client(pg, "acme")
    await opt_out(pg, settings, "ann@example.com", ACME)
    await opt_out(pg, settings, "ann@example.com", MARKETING)
    conn = await asyncpg.connect(url)
    try:
        for scope in (ACME, MARKETING):
            out = io.StringIO()
            with pytest.raises(PermissionDenied, match="needs the privacy_officer role"):
                await privacy.export_opt_outs(conn, scope, out)
            assert out.getvalue() == ""
    finally:
        await conn.close()
    done = await cli(
        settings.model_copy(update={"database_url": url}), "export-opt-outs", "--client", "acme"
    )
    assert done.code == 1
    assert done.stderr.strip() == "Error: export-opt-outs needs the privacy_officer role"
    assert done.stdout == ""


@pytest.mark.parametrize("role", ROLES)
async def test_nobody_but_the_owner_rewrites_the_audit_trail(pg: asyncpg.Pool, role: str) -> None:
    await pg.execute(
        """INSERT INTO opt_out_audit (action, scope, email_hash, actor)
           VALUES ('opt_out', 'marketing', '\\x00', 'test')"""
    )
    async with pg.acquire() as conn:
        for sql in ("DELETE FROM opt_out_audit", "UPDATE opt_out_audit SET actor = 'x'"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await as_role(conn, role, sql)


async def test_the_web_role_cannot_touch_the_ledger(pg: asyncpg.Pool) -> None:
    async with pg.acquire() as conn:
        for sql in (
            "UPDATE invitations SET state = 'sent'",
            "DELETE FROM invitations",
            "UPDATE clients SET name = 'x'",
            "DELETE FROM bounces",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await as_role(conn, "survey_web", sql)


async def test_a_worker_login_sends_a_campaign_with_its_grants_alone(
    pg: asyncpg.Pool,
    settings: Settings,
    smtp: tuple[RecordingHandler, int],
    login_user: LoginUser,
) -> None:
    url = await login_user("survey_worker")
    worker_settings = settings.model_copy(update={"database_url": url})
    pool = await db.create_pool(url, max_size=2)
    try:
        await add_client(pool, "acme")
        # The second time the entry exists: INSERT ... ON CONFLICT DO NOTHING as the worker.
        await opt_out(pool, settings, "ann@example.com", ACME)
        await opt_out(pool, settings, "ann@example.com", ACME)
        report = await launch(pool, worker_settings, csv_of("ann@example.com", "bob@example.com"))
        await run_workers(worker_settings)
        # Retention runs in the worker too.
        await pool.execute(
            "UPDATE campaigns SET completed_at = now() - interval '400 days' WHERE id = $1",
            report.campaign_id,
        )
        async with pool.acquire() as conn:
            purged = await privacy.purge(conn, retention_days=365)
            with pytest.raises(PermissionDenied, match="resubscribe needs the privacy_officer"):
                await privacy.resubscribe(
                    conn,
                    ACME,
                    email_hash=email_hash(settings, "ann@example.com"),
                    actor="worker",
                    reason="should not be possible",
                )
    finally:
        await pool.close()
    assert received_by(smtp[0].messages) == {"bob@example.com": 1}
    assert purged.invitations == 2
    assert await pg.fetchval("SELECT count(*) FROM client_opt_outs") == 1


async def test_a_web_login_records_opt_outs_with_its_grants_alone(
    pg: asyncpg.Pool, settings: Settings, login_user: LoginUser
) -> None:
    url = await login_user("survey_web")
    await add_client(pg, "acme")
    # An invitation holds the address, so the opt-out keeps it for the client's export.
    await launch(pg, settings, csv_of("ann@example.com"), enqueue=False)
    token = token_for(settings, "ann@example.com", await token_id(pg, "acme"))
    async with serving(settings, database_url=url) as base, httpx.AsyncClient(base_url=base) as c:
        page = await c.get(f"/unsubscribe/{token}")
        done = await c.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
        again = await c.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert page.status_code == done.status_code == again.status_code == 200
    rows = await pg.fetch("SELECT email, source FROM client_opt_outs")
    assert [tuple(r) for r in rows] == [("ann@example.com", "one-click")]


async def test_a_privacy_officer_login_reverses_exports_and_erases(
    pg: asyncpg.Pool, settings: Settings, login_user: LoginUser
) -> None:
    url = await login_user("privacy_officer")
    await add_client(pg, "acme")
    await opt_out(pg, settings, "ann@example.com", ACME)
    await opt_out(pg, settings, "bob@example.com", ACME)
    conn = await asyncpg.connect(url)
    try:
        out = io.StringIO()
        report = await privacy.export_opt_outs(conn, ACME, out)
        assert report.exported == 2
        assert await privacy.resubscribe(
            conn,
            ACME,
            email_hash=email_hash(settings, "ann@example.com"),
            actor="privacy@firm.example",
            reason="asked by phone, ticket 42",
        )
        erased = await privacy.erase(
            conn, email_hash=email_hash(settings, "bob@example.com"), actor="privacy"
        )
        assert erased.client_opt_outs == 1
    finally:
        await conn.close()
    rows = await pg.fetch("SELECT email FROM client_opt_outs")
    assert [r["email"] for r in rows] == [None]


@pytest.mark.parametrize("role", ["survey_worker", "survey_web"])
async def test_only_the_privacy_officer_resubscribes_and_erases(
    pg: asyncpg.Pool, settings: Settings, login_user: LoginUser, role: str
) -> None:
    url = await login_user(role)
    as_role = settings.model_copy(update={"database_url": url})
    await add_client(pg, "acme")
    await opt_out(pg, settings, "ann@example.com", ACME)
    actor = ("--actor", "privacy@firm.example")
    attempts = {
        "resubscribe": ("resubscribe", "ann@example.com", "--client", "acme", *actor),
        "erase": ("erase", "ann@example.com", *actor),
    }
    for command, args in attempts.items():
        reason = ("--reason", "asked to") if command == "resubscribe" else ()
        done = await cli(as_role, *args, *reason)
        assert done.code == 1
        assert done.stderr.strip() == f"Error: {command} needs the privacy_officer role"
    row = await pg.fetchrow("SELECT email FROM client_opt_outs WHERE client_id = 'acme'")
    assert row["email"] == "ann@example.com"
    assert await pg.fetchval("SELECT count(*) FROM opt_out_audit WHERE action <> 'opt_out'") == 0
