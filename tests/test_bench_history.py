"""`make bench BENCH_ARGS="--history N"` keeps working: its fill, at a tiny size, leaves a
consistent history with rows for every measurement it makes (bench/history.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from bench import history
from worker import access, addresses, campaigns, db, feed, ledger, privacy
from worker.settings import Settings
from worker.web.ops import store

PLAN = history.Plan(2_000)


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    await db.init_connection(connection)
    yield connection
    await connection.close()


async def test_a_tiny_history_has_rows_for_every_measurement(
    conn: asyncpg.Connection, settings: Settings, tmp_path: Path
) -> None:
    await history.fill(conn, PLAN, settings.hash_key())

    assert await conn.fetchval("SELECT count(*) FROM invitations") == PLAN.invitations
    assert await conn.fetchval("SELECT count(*) FROM campaigns") == PLAN.campaigns
    assert await conn.fetchval("SELECT count(*) FROM clients") == history.CLIENTS
    # What the load did without foreign-key checks holds them: every reminder follows a
    # first message of its campaign, and each opt-out of a client's list is in its feed
    # (as its erasure once erased).
    assert not await conn.fetchval(
        """SELECT count(*) FROM invitations r
           LEFT JOIN invitations f ON f.id = r.parent_id AND f.campaign_id = r.campaign_id
                                    AND f.round = 0 AND f.email_hash = r.email_hash
           WHERE r.round > 0 AND f.id IS NULL"""
    )
    assert await conn.fetchval("SELECT count(*) FROM invitations WHERE round = 1")
    assert not await conn.fetchval(
        """SELECT count(*) FROM client_opt_outs o
           WHERE NOT EXISTS (SELECT FROM opt_out_feed f WHERE f.client_id = o.client_id
                             AND f.email_hash = o.email_hash
                             AND f.kind IN ('opt_out', 'erase'))"""
    )
    for table in ("marketing_opt_outs", "bounces", "feedback", "contact_counts", "survey_refs"):
        assert await conn.fetchval(f"SELECT count(*) FROM {table}"), table
    kinds = {r["kind"] for r in await conn.fetch("SELECT DISTINCT kind FROM opt_out_feed")}
    assert kinds == {"opt_out", "resubscribe", "erase"}

    who = await history.subjects(conn)
    # The history's addresses are hashed in SQL as the worker hashes them.
    person = addresses.normalise(who.person)
    email_hash = addresses.address_hash(settings.hash_key(), person)
    report = await access.request(conn, email=person, email_hash=email_hash, actor="test")
    assert report.counts()["invitations"] > 1
    assert report.counts()["client_opt_outs"] == 1

    status = await campaigns.status_report(conn, who.history_campaign)
    assert status.status == "completed" and status.total > 0
    overview = await store.overview(conn)
    assert {"paused", "completed"} <= {row.status for row in overview}
    assert who.yesterday_cursor and who.feed_cursors

    assert await ledger.create_due_reminders(conn) == []
    await conn.execute(
        """INSERT INTO feed_drops (client_id, directory, cursor) VALUES ($1, $2, $3)""",
        who.client_id,
        str(tmp_path),
        who.yesterday_cursor,
    )
    drop = await feed.drop(conn, who.client_id, tmp_path)
    assert (
        0
        < drop.count
        < await conn.fetchval(
            "SELECT count(*) FROM opt_out_feed WHERE client_id = $1", who.client_id
        )
    )

    expired = await conn.fetchval(
        """SELECT count(*) FROM invitations i JOIN campaigns c ON c.id = i.campaign_id
           WHERE c.completed_at < now() - make_interval(days => $1)""",
        history.RETENTION_DAYS,
    )
    purged = await privacy.purge(conn, retention_days=history.RETENTION_DAYS)
    assert purged.campaigns == PLAN.expired
    assert purged.invitations == expired > 0
