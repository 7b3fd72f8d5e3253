"""`survey-worker access-request`: everything held about an address, for the privacy
officer only, audited, and read through indexes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import asyncpg
import pytest

from tests.support.commands import REFUSED_OUTPUTS, assert_output_refused, output_path
from tests.support.pipeline import add_client, csv_of, launch
from tests.support.web import cli, email_hash
from worker import access, optouts, privacy
from worker.settings import Settings
from worker.suppression import Scope

ANN = "ann@example.com"


async def setup_ann(pg: asyncpg.Pool, settings: Settings) -> None:
    await add_client(pg, "acme")
    await add_client(pg, "globex")
    await launch(pg, settings, csv_of(ANN, "bob@example.com"), enqueue=False)
    await launch(pg, settings, csv_of(ANN), client_id="globex", enqueue=False)
    async with pg.acquire() as conn:
        await optouts.add(
            conn,
            Scope("survey", "acme"),
            email_hash=email_hash(settings, ANN),
            email=ANN,
            source="web",
            actor="recipient",
        )
        await conn.execute(
            "INSERT INTO bounces (email_hash, kind) VALUES ($1, 'complaint')",
            email_hash(settings, ANN),
        )


async def test_the_document_holds_everything_about_the_address_and_nothing_else(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    await setup_ann(pg, settings)
    output = tmp_path / "ann.json"
    done = await cli(
        settings, "access-request", "Ann@Example.com", "--actor", "anna", "--output", str(output)
    )
    assert done.code == 0, done.stderr
    assert done.stdout == ""
    assert "access request answered in" in done.stderr
    document = json.loads(output.read_text())
    assert document["request"]["email"] == ANN
    assert document["request"]["actor"] == "anna"
    assert document["erased"] is False
    held = document["held"]
    invitations = held["invitations"]
    assert sorted(i["client_id"] for i in invitations) == ["acme", "globex"]
    assert {i["email"] for i in invitations} == {ANN}
    assert all("state" in i and "campaign_name" in i and "vars" in i for i in invitations)
    assert [(o["client_id"], o["email"]) for o in held["client_opt_outs"]] == [("acme", ANN)]
    assert [b["kind"] for b in held["bounces"]] == ["complaint"]
    assert [(f["kind"], f["email"]) for f in held["opt_out_feed"]] == [("opt_out", ANN)]
    # The audit trail: the opt-out, and this request itself.
    assert [a["action"] for a in held["opt_out_audit"]] == ["opt_out", "access"]
    assert "bob@example.com" not in output.read_text()
    audit = await pg.fetchrow("SELECT actor, scope FROM opt_out_audit WHERE action = 'access'")
    assert dict(audit) == {"actor": "anna", "scope": "all"}


async def test_after_erasure_only_the_hashes_are_left(pg: asyncpg.Pool, settings: Settings) -> None:
    await setup_ann(pg, settings)
    async with pg.acquire() as conn:
        await privacy.erase(conn, email_hash=email_hash(settings, ANN), actor="anna")
    done = await cli(settings, "access-request", ANN, "--actor", "anna")
    assert done.code == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["erased"] is True
    held = document["held"]
    rows = [row for table in held.values() for row in table]
    assert rows, "the hashes that keep the person suppressed are still held"
    assert all(row.get("email") is None for row in rows)
    assert all(i["vars"] == {} for i in held["invitations"])
    assert [f["kind"] for f in held["opt_out_feed"]] == ["erase"]
    # Only the hashes still held: the address asked about is not written either.
    assert ANN not in done.stdout.lower()
    assert "email" not in document["request"]
    assert document["request"]["email_hash"] == email_hash(settings, ANN).hex()


@pytest.mark.parametrize(("output", "error"), REFUSED_OUTPUTS)
async def test_an_output_that_cannot_be_written_is_refused_before_the_audit(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path, output: str, error: str
) -> None:
    await setup_ann(pg, settings)
    path = output_path(tmp_path, output)
    done = await cli(settings, "access-request", ANN, "--actor", "anna", "--output", path)
    assert_output_refused(done, tmp_path, error)
    assert await pg.fetchval("SELECT count(*) FROM opt_out_audit WHERE action = 'access'") == 0


@pytest.mark.parametrize("role", ["privacy_officer", "survey_worker", "survey_web"])
async def test_only_the_privacy_officer_may(
    pg: asyncpg.Pool, settings: Settings, database_url: str, role: str, tmp_path: Path
) -> None:
    await setup_ann(pg, settings)
    user = f"t_{role}_access"
    await pg.execute(f"CREATE ROLE {user} LOGIN IN ROLE {role}")
    try:
        scheme, _, rest = database_url.partition("://")
        url = f"{scheme}://{user}@{rest.partition('@')[2]}"
        done = await cli(
            settings,
            "access-request",
            ANN,
            "--actor",
            "x",
            "--output",
            str(tmp_path / "ann.json"),
            env={"DATABASE_URL": url},
        )
    finally:
        await pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", user
        )
        await pg.execute(f"DROP ROLE {user}")
    audited = await pg.fetchval("SELECT count(*) FROM opt_out_audit WHERE action = 'access'")
    if role == "privacy_officer":
        # Its grants alone reach every table that holds an address.
        assert done.code == 0, done.stderr
        document = json.loads((tmp_path / "ann.json").read_text())
        assert len(document["held"]["invitations"]) == 2
        assert audited == 1
        return
    assert done.code == 1
    assert done.stderr.strip().endswith("access-request needs the privacy_officer role")
    assert done.stdout == ""
    assert audited == 0
    # A refused request leaves no document behind, not even an empty one.
    assert os.listdir(tmp_path) == []


async def test_actor_is_required_and_a_bad_address_is_one_line(settings: Settings) -> None:
    blank = await cli(settings, "access-request", ANN, "--actor", "  ")
    bad = await cli(settings, "access-request", "not an address", "--actor", "anna")
    assert blank.code == bad.code == 1
    assert len(blank.stderr.strip().splitlines()) == len(bad.stderr.strip().splitlines()) == 1


async def test_every_table_that_holds_an_address_is_read_through_an_index(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    async with pg.acquire() as conn:
        tables = await access.address_tables(conn)
        assert {"invitations", "client_opt_outs", "opt_out_audit", "opt_out_feed"} <= set(tables)
        await conn.execute("SET enable_seqscan = off")
        for section, sql in access.queries(tables).items():
            plan = "\n".join(
                r[0] for r in await conn.fetch(f"EXPLAIN {sql}", email_hash(settings, ANN))
            )
            assert "Seq Scan" not in plan, f"{section} is not read through an index:\n{plan}"
