"""`launch --idempotency-key`: a client's repeated launch returns its first campaign."""

from __future__ import annotations

import asyncio
import io

import asyncpg

from tests.support.pipeline import add_client, csv_of
from worker import campaigns
from worker.render import TemplateStore
from worker.settings import Settings


async def test_a_concurrent_launch_with_the_same_key_creates_one_campaign(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    await add_client(pg, "acme")
    request = campaigns.LaunchRequest(
        client_id="acme",
        template="invitation",
        kind="survey",
        survey_url="https://survey.test/s",
        name="retried",
        locale="en",
        idempotency_key="k-1",
    )
    async with pg.acquire() as first, pg.acquire() as second:
        # The first launch has inserted its campaign and not committed yet, so the second
        # finds no campaign with the key and goes on to insert its own.
        transaction = first.transaction()
        await transaction.start()
        first_id = await first.fetchval(
            """INSERT INTO campaigns (client_id, name, kind, template, survey_url, idempotency_key)
               VALUES ('acme', 'first', 'survey', 'invitation', '', 'k-1') RETURNING id"""
        )
        await first.execute(
            "INSERT INTO invitations (campaign_id, email, email_hash) VALUES ($1, 'a@x.test', 'a')",
            first_id,
        )
        racing = asyncio.create_task(
            campaigns.launch(
                second,
                request,
                io.BytesIO(csv_of("zed@example.com").encode()),
                templates=TemplateStore(settings.templates_dir),
                hash_key=settings.hash_key(),
                progress=lambda _n: None,
            )
        )
        await asyncio.sleep(0.5)
        assert not racing.done(), "the second insert must wait for the first transaction"
        await transaction.commit()
        report = await asyncio.wait_for(racing, 10)
    assert (report.campaign_id, report.imported, report.existing) == (first_id, 1, True)
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 1
    assert await pg.fetchval("SELECT count(*) FROM invitations") == 1
