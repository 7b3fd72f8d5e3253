"""The feedback loop through real workers: reports carried by `record_feedback` jobs in
Redis change the lists in Postgres, count once, and pause a campaign that bounces."""

from __future__ import annotations

import base64
import json
import uuid

import asyncpg
import pytest

from tests.support.pipeline import add_client, csv_of, launch, run_workers
from tests.support.reports import abuse_report, delivery_status
from tests.support.smtp import RecordedMessage, RecordingHandler
from tests.support.web import cli, email_hash, private_logs
from worker import queue
from worker.feedback import Event
from worker.settings import Settings

SMTP = tuple[RecordingHandler, int]
BOUNCE_DOMAIN = "bounces.test"


@pytest.fixture
def fb_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"bounce_domain": BOUNCE_DOMAIN})


async def send_reports(settings: Settings, *reports: dict[str, object]) -> None:
    """Queue `record_feedback` jobs as inbound and the webhooks do, and run a worker."""
    assert settings.redis_url is not None
    redis = await queue.connect(settings.redis_url)
    try:
        for report in reports:
            await queue.enqueue_feedback(redis, report, job_id=uuid.uuid4().hex)
    finally:
        await redis.aclose()
    await run_workers(settings)


def bounced(message: RecordedMessage, report: bytes) -> dict[str, object]:
    """What `survey-worker inbound` queues for `report` received at the VERP address."""
    return {"verp": message.sender, "message": base64.b64encode(report).decode()}


def events(*items: Event) -> dict[str, object]:
    return {"events": [e.as_job() for e in items]}


def message_to(handler: RecordingHandler, address: str) -> RecordedMessage:
    return next(m for m in handler.messages if m.recipients == (address,))


async def status(settings: Settings, campaign_id: int) -> dict[str, object]:
    done = await cli(settings, "status", str(campaign_id), "--json")
    assert done.code == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


async def test_a_hard_bounce_lists_the_address_once_and_the_next_campaign_skips_it(
    pg: asyncpg.Pool, fb_settings: Settings, smtp: SMTP
) -> None:
    handler = smtp[0]
    await add_client(pg, "acme")
    first = await launch(pg, fb_settings, csv_of("ann@example.com", "bob@example.com"))
    await run_workers(fb_settings)
    ann = message_to(handler, "ann@example.com")
    # The envelope names the invitation; the From header still names the client.
    assert ann.sender.startswith("b-") and ann.sender.endswith("@" + BOUNCE_DOMAIN)
    assert b"From: Acme <surveys@acme.example>" in ann.data
    report = delivery_status(ann, status="5.1.1")
    with private_logs() as logs:
        # The same DSN delivered twice counts once.
        await send_reports(fb_settings, bounced(ann, report), bounced(ann, report))
    bounces = [e for e in logs if e["event"] == "feedback.bounce"]
    assert [(e["kind"], e["status"], e["listed"]) for e in bounces] == [("hard", "5.1.1", True)]
    assert [e["reason"] for e in logs if e["event"] == "feedback.ignored"] == ["duplicate"]
    report_json = await status(fb_settings, first.campaign_id)
    assert report_json["feedback"] == {"hard": 1, "soft": 0, "policy": 0, "complaints": 0}
    kinds = await pg.fetch(
        "SELECT kind FROM bounces WHERE email_hash = $1", email_hash(fb_settings, "ann@example.com")
    )
    assert [r["kind"] for r in kinds] == ["hard"]

    handler.messages.clear()
    second = await launch(pg, fb_settings, csv_of("ann@example.com", "bob@example.com"))
    await run_workers(fb_settings)
    assert [m.recipients for m in handler.messages] == [("bob@example.com",)]
    assert (await status(fb_settings, second.campaign_id))["reasons"] == {"suppressed:bounced": 1}


@pytest.mark.parametrize(("status_code", "kind"), [("5.7.1", "policy"), ("4.2.2", "soft")])
async def test_policy_and_single_soft_bounces_are_counted_but_suppress_nobody(
    pg: asyncpg.Pool, fb_settings: Settings, smtp: SMTP, status_code: str, kind: str
) -> None:
    handler = smtp[0]
    await add_client(pg, "acme")
    first = await launch(pg, fb_settings, csv_of("ann@example.com"))
    await run_workers(fb_settings)
    ann = message_to(handler, "ann@example.com")
    await send_reports(fb_settings, bounced(ann, delivery_status(ann, status=status_code)))
    feedback = (await status(fb_settings, first.campaign_id))["feedback"]
    assert isinstance(feedback, dict) and feedback[kind] == 1
    assert await pg.fetchval("SELECT count(*) FROM bounces") == 0


async def test_soft_bounces_list_an_address_at_the_limit_unless_a_delivery_came_between(
    pg: asyncpg.Pool, fb_settings: Settings, smtp: SMTP
) -> None:
    settings = fb_settings.model_copy(update={"soft_bounce_limit": 2})
    await add_client(pg, "acme")
    ids: dict[str, list[int]] = {"carol@example.com": [], "dave@example.com": []}
    for _ in range(3):
        campaign = await launch(pg, settings, csv_of(*ids))
        await run_workers(settings)
        for row in await pg.fetch(
            "SELECT id, email FROM invitations WHERE campaign_id = $1", campaign.campaign_id
        ):
            ids[row["email"]].append(row["id"])

    def about(address: str, n: int, kind: str) -> Event:
        # As a provider's webhook names a message: by its Message-ID.
        message_id = f"invitation-{ids[address][n]}@acme.example"
        return Event(kind, "ses", message_id=message_id)  # type: ignore[arg-type]

    await send_reports(settings, events(about("carol@example.com", 0, "soft")))
    await send_reports(settings, events(about("dave@example.com", 0, "soft")))
    await send_reports(settings, events(about("dave@example.com", 1, "delivered")))
    listed = "SELECT count(*) FROM bounces WHERE email_hash = $1 AND kind = 'soft'"
    carol, dave = (email_hash(settings, a) for a in ids)
    assert await pg.fetchval(listed, carol) == 0
    await send_reports(
        settings,
        events(about("carol@example.com", 1, "soft"), about("dave@example.com", 2, "soft")),
    )
    assert await pg.fetchval(listed, carol) == 1
    assert await pg.fetchval(listed, dave) == 0


async def test_a_complaint_opts_out_of_the_campaigns_list_audited_and_off_every_list(
    pg: asyncpg.Pool, fb_settings: Settings, smtp: SMTP
) -> None:
    handler = smtp[0]
    await add_client(pg, "acme")
    await add_client(pg, "globex")
    await launch(pg, fb_settings, csv_of("ann@example.com"))
    await run_workers(fb_settings)
    ann = message_to(handler, "ann@example.com")
    with private_logs() as logs:
        await send_reports(fb_settings, bounced(ann, abuse_report(ann)))
    assert [e["opted_out"] for e in logs if e["event"] == "feedback.complaint"] == [True]
    hashed = email_hash(fb_settings, "ann@example.com")
    opt_out = await pg.fetchrow(
        "SELECT client_id, email, source FROM client_opt_outs WHERE email_hash = $1", hashed
    )
    assert dict(opt_out) == {"client_id": "acme", "email": "ann@example.com", "source": "complaint"}
    audit = await pg.fetchrow("SELECT action, scope, actor, reason FROM opt_out_audit")
    assert dict(audit) == {
        "action": "opt_out",
        "scope": "client:acme",
        "actor": "feedback",
        "reason": "complaint",
    }
    assert await pg.fetchval("SELECT kind FROM bounces WHERE email_hash = $1", hashed) == (
        "complaint"
    )
    handler.messages.clear()
    other = await launch(pg, fb_settings, csv_of("ann@example.com"), client_id="globex")
    await run_workers(fb_settings)
    assert handler.messages == []
    assert (await status(fb_settings, other.campaign_id))["reasons"] == {"suppressed:bounced": 1}


async def test_reports_that_name_no_message_of_ours_change_nothing(
    pg: asyncpg.Pool, fb_settings: Settings, smtp: SMTP
) -> None:
    handler = smtp[0]
    await add_client(pg, "acme")
    await launch(pg, fb_settings, csv_of("ann@example.com"))
    await run_workers(fb_settings)
    ann = message_to(handler, "ann@example.com")
    invitation_id = await pg.fetchval("SELECT id FROM invitations")
    forged_verp = "b-" + "a" * 36 + "@" + BOUNCE_DOMAIN
    with private_logs() as logs:
        await send_reports(
            fb_settings,
            # The right invitation id at another domain is not our Message-ID.
            events(Event("hard", "ses", message_id=f"invitation-{invitation_id}@evil.example")),
            events(Event("hard", "ses", message_id="invitation-999999@acme.example")),
            {"verp": forged_verp, "message": base64.b64encode(delivery_status(ann)).decode()},
            {"verp": ann.sender, "message": "not base64!"},
            {"events": [{"kind": "hard"}]},
            {"unexpected": 1},
        )
    ignored = [e["reason"] for e in logs if e["event"] == "feedback.ignored"]
    assert ignored == ["not_our_message"] * 3
    assert len([e for e in logs if e["event"] == "job.malformed"]) == 3
    assert await pg.fetchval("SELECT count(*) FROM feedback") == 0
    assert await pg.fetchval("SELECT count(*) FROM bounces") == 0


async def test_a_campaign_pauses_itself_when_its_bounce_rate_crosses_the_threshold(
    pg: asyncpg.Pool, fb_settings: Settings, smtp: SMTP
) -> None:
    settings = fb_settings.model_copy(update={"pause_min_sent": 4, "pause_bounce_rate": 0.5})
    handler = smtp[0]
    await add_client(pg, "acme")
    people = [f"p{n}@example.com" for n in range(6)]
    campaign = await launch(pg, settings, csv_of(*people), enqueue=False)
    ids = [r["id"] for r in await pg.fetch("SELECT id FROM invitations ORDER BY id")]
    assert settings.redis_url is not None
    redis = await queue.connect(settings.redis_url)
    try:
        # Four of six sent; the campaign is still running when the bounces come back.
        for invitation_id in ids[:4]:
            await redis.enqueue_job(queue.Job.SEND_INVITATION, invitation_id)
    finally:
        await redis.aclose()
    await run_workers(settings)
    assert len(handler.messages) == 4
    first = [bounced(m, delivery_status(m)) for m in handler.messages[:2]]
    with private_logs() as logs:
        await send_reports(settings, first[0])
        assert (await status(settings, campaign.campaign_id))["status"] == "running"
        await send_reports(settings, first[1])
    paused = [e for e in logs if e["event"] == "campaign.paused"]
    assert [(e["reason"], e["rate"], e["sent"]) for e in paused] == [("bounce_rate", 0.5, 4)]
    report = await status(settings, campaign.campaign_id)
    assert (report["status"], report["status_reason"]) == ("paused", "bounce_rate")
    resumed = await cli(settings, "resume", str(campaign.campaign_id))
    assert resumed.code == 0, resumed.stderr
    report = await status(settings, campaign.campaign_id)
    assert (report["status"], report["status_reason"]) == ("running", None)


async def test_a_complaint_rate_pauses_a_campaign(
    pg: asyncpg.Pool, fb_settings: Settings, smtp: SMTP
) -> None:
    settings = fb_settings.model_copy(update={"pause_min_sent": 2, "pause_complaint_rate": 0.5})
    handler = smtp[0]
    await add_client(pg, "acme")
    campaign = await launch(
        pg, settings, csv_of("a@example.com", "b@example.com", "c@example.com"), enqueue=False
    )
    ids = [r["id"] for r in await pg.fetch("SELECT id FROM invitations ORDER BY id")]
    assert settings.redis_url is not None
    redis = await queue.connect(settings.redis_url)
    try:
        for invitation_id in ids[:2]:
            await redis.enqueue_job(queue.Job.SEND_INVITATION, invitation_id)
    finally:
        await redis.aclose()
    await run_workers(settings)
    await send_reports(settings, bounced(handler.messages[0], abuse_report(handler.messages[0])))
    report = await status(settings, campaign.campaign_id)
    assert (report["status"], report["status_reason"]) == ("paused", "complaint_rate")
    assert report["feedback"] == {"hard": 0, "soft": 0, "policy": 0, "complaints": 1}


async def test_a_refusal_at_send_time_counts_as_a_hard_bounce_and_can_pause(
    pg: asyncpg.Pool, fb_settings: Settings, smtp: SMTP
) -> None:
    settings = fb_settings.model_copy(
        update={"pause_min_sent": 2, "pause_bounce_rate": 0.3, "chunk_size": 4, "slice_size": 4}
    )
    handler = smtp[0]
    people = [f"p{n}@example.com" for n in range(40)]
    for address in people[4:]:
        handler.on(address, reply="550 5.1.1 No such user")
    await add_client(pg, "acme")
    campaign = await launch(pg, settings, csv_of(*people))
    with private_logs() as logs:
        await run_workers(settings)
    report = await status(settings, campaign.campaign_id)
    assert (report["status"], report["status_reason"]) == ("paused", "bounce_rate")
    feedback = report["feedback"]
    assert isinstance(feedback, dict) and feedback["hard"] >= 2
    counts = report["counts"]
    assert isinstance(counts, dict) and counts.get("pending", 0) > 0
    assert await pg.fetchval("SELECT count(*) FROM bounces WHERE kind = 'hard'") == feedback["hard"]
    assert [e["reason"] for e in logs if e["event"] == "campaign.paused"] == ["bounce_rate"]
