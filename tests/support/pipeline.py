"""Driving the real pipeline from tests: launch through the ledger, run arq workers."""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
from datetime import timedelta
from email.message import EmailMessage

import asyncpg
from arq.worker import Worker

from tests.support.smtp import RecordedMessage
from worker import addresses, campaigns, optouts, queue
from worker.main import create_worker
from worker.render import TemplateStore
from worker.settings import Settings
from worker.suppression import Scope


def make_worker(settings: Settings, *, burst: bool = True) -> Worker:
    """An arq worker exactly as `survey-worker worker` builds it, in this event loop."""
    assert settings.database_url is not None and settings.redis_url is not None
    return create_worker(
        settings,
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        burst=burst,
        handle_signals=False,
        poll_delay=0.05,
    )


async def run_workers(settings: Settings, count: int = 1, *, timeout: float = 60) -> None:
    """Run `count` burst workers side by side until the queue is empty."""
    workers = [make_worker(settings) for _ in range(count)]
    try:
        await asyncio.wait_for(asyncio.gather(*(w.main() for w in workers)), timeout)
    finally:
        for w in workers:
            await w.close()


async def add_client(pool: asyncpg.Pool, client_id: str, name: str | None = None) -> None:
    async with pool.acquire() as conn:
        await campaigns.add_client(
            conn, client_id, name or client_id.title(), f"surveys@{client_id}.example"
        )


async def launch(
    pool: asyncpg.Pool,
    settings: Settings,
    csv_text: str,
    *,
    client_id: str = "acme",
    kind: str = "survey",
    template: str = "invitation",
    enqueue: bool = True,
    reminders: int = 0,
    reminder_interval: timedelta | None = None,
) -> campaigns.LaunchReport:
    """Import a campaign from CSV text and (by default) enqueue `launch_campaign`."""
    async with pool.acquire() as conn:
        report = await campaigns.launch(
            conn,
            campaigns.LaunchRequest(
                client_id=client_id,
                template=template,
                kind=kind,
                survey_url="https://survey.test/s",
                name="test",
                locale="en",
                reminders=reminders,
                reminder_interval=reminder_interval,
            ),
            io.BytesIO(csv_text.encode()),
            templates=TemplateStore(settings.templates_dir),
            hash_key=settings.hash_key(),
            progress=lambda _n: None,
        )
    if enqueue:
        await enqueue_launch(settings, report.campaign_id)
    return report


async def enqueue_launch(settings: Settings, campaign_id: int) -> None:
    """Enqueue `launch_campaign` for the campaign, as `launch` and reconcile do."""
    assert settings.redis_url is not None
    redis = await queue.connect(settings.redis_url)
    try:
        await queue.enqueue_launch(redis, campaign_id)
    finally:
        await redis.aclose()


async def opt_out(pool: asyncpg.Pool, settings: Settings, address: str, scope: Scope) -> None:
    email_address = addresses.normalise(address)
    async with pool.acquire() as conn:
        await optouts.add(
            conn,
            scope,
            email_hash=addresses.address_hash(settings.hash_key(), email_address),
            email=email_address,
            source="test",
            actor="test",
        )


def csv_of(*emails: str, extra: str = "") -> str:
    """A recipients file with one row per address."""
    return "email\n" + "".join(f"{e}\n" for e in emails) + extra


def received_by(messages: list[RecordedMessage]) -> dict[str, int]:
    """How many messages each envelope recipient received."""
    counts: dict[str, int] = {}
    for m in messages:
        for r in m.recipients:
            counts[r] = counts.get(r, 0) + 1
    return counts


def assert_once_after_a_failover(
    states: dict[str, int], messages: list[RecordedMessage], people: int, connections: int
) -> None:
    """After a server was lost mid-campaign: no address got two messages, only those on
    the wire then (at most `connections`) are `unknown`, every other one of the `people`
    is `sent`, and the server received each `sent` one and at most the `unknown` ones."""
    received = received_by(messages)
    assert max(received.values()) == 1, "an invitation was sent twice"
    unknown = states.get("unknown", 0)
    assert unknown <= connections
    assert states.get("sent", 0) + unknown == people, states
    assert states.get("sent", 0) <= len(received) <= states.get("sent", 0) + unknown


def parse(message: RecordedMessage) -> EmailMessage:
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed
