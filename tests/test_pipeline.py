"""The core pipeline end to end on real Postgres, Redis (arq) and SMTP (aiosmtpd)."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import asyncpg
import orjson
import structlog
from structlog.testing import capture_logs

from tests.support.pipeline import (
    add_client,
    csv_of,
    launch,
    opt_out,
    parse,
    received_by,
    run_workers,
)
from tests.support.smtp import RecordingHandler
from worker import optouts, queue, tokens
from worker.settings import Settings
from worker.suppression import Scope

SMTP = tuple[RecordingHandler, int]


async def states(pool: asyncpg.Pool, campaign_id: int) -> dict[str, str]:
    rows = await pool.fetch(
        "SELECT email, state, reason FROM invitations WHERE campaign_id = $1", campaign_id
    )
    return {r["email"]: r["state"] + (f":{r['reason']}" if r["reason"] else "") for r in rows}


async def test_client_opt_out_applies_to_that_clients_surveys_only(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    await add_client(pg, "acme")
    await add_client(pg, "globex")
    await opt_out(pg, settings, "ann@example.com", Scope("survey", "acme"))
    acme = await launch(pg, settings, csv_of("ann@example.com", "bob@example.com"))
    globex = await launch(pg, settings, csv_of("ann@example.com"), client_id="globex")
    await run_workers(settings)

    assert await states(pg, acme.campaign_id) == {
        "ann@example.com": "suppressed:client_opt_out",
        "bob@example.com": "sent",
    }
    assert await states(pg, globex.campaign_id) == {"ann@example.com": "sent"}
    got = received_by(smtp[0].messages)
    assert got == {"bob@example.com": 1, "ann@example.com": 1}
    ann = [m for m in smtp[0].messages if m.recipients == ("ann@example.com",)]
    assert parse(ann[0])["From"].addresses[0].addr_spec == "surveys@globex.example"


async def test_marketing_list_suppresses_marketing_only(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    await add_client(pg, "acme")
    await opt_out(pg, settings, "ann@example.com", Scope("marketing", ""))
    survey = await launch(pg, settings, csv_of("ann@example.com"))
    marketing = await launch(
        pg,
        settings,
        csv_of("ann@example.com", "bob@example.com"),
        kind="marketing",
        template="marketing",
    )
    await run_workers(settings)

    assert await states(pg, survey.campaign_id) == {"ann@example.com": "sent"}
    assert await states(pg, marketing.campaign_id) == {
        "ann@example.com": "suppressed:marketing_opt_out",
        "bob@example.com": "sent",
    }
    assert received_by(smtp[0].messages) == {"ann@example.com": 1, "bob@example.com": 1}


async def test_a_client_s_marketing_launch_never_mails_that_client_s_opted_out_customers(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    await add_client(pg, "acme")
    await add_client(pg, "globex")
    await opt_out(pg, settings, "ann@example.com", Scope("survey", "acme"))
    acme = await launch(
        pg,
        settings,
        csv_of("ann@example.com", "bob@example.com"),
        kind="marketing",
        template="marketing",
    )
    # Another client's list stays out of it.
    globex = await launch(
        pg,
        settings,
        csv_of("ann@example.com"),
        client_id="globex",
        kind="marketing",
        template="marketing",
    )
    await run_workers(settings)

    assert await states(pg, acme.campaign_id) == {
        "ann@example.com": "suppressed:client_opt_out",
        "bob@example.com": "sent",
    }
    assert await states(pg, globex.campaign_id) == {"ann@example.com": "sent"}
    assert received_by(smtp[0].messages) == {"bob@example.com": 1, "ann@example.com": 1}


async def test_the_link_in_a_client_s_marketing_mail_leaves_that_client_s_list_too(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    await add_client(pg, "acme")
    marketing = await launch(
        pg, settings, csv_of("bob@example.com"), kind="marketing", template="marketing"
    )
    await run_workers(settings)
    assert await states(pg, marketing.campaign_id) == {"bob@example.com": "sent"}
    url = parse(smtp[0].messages[0])["List-Unsubscribe"].strip("<>")
    claims = tokens.verify(settings.signing_keys(), url.rsplit("/", 1)[1])
    assert claims is not None
    async with pg.acquire() as conn:
        scopes = await optouts.add_from_token(conn, claims, source="one-click")
    assert scopes == [Scope("survey", "acme"), Scope("marketing", "")]

    survey = await launch(pg, settings, csv_of("bob@example.com"))
    await run_workers(settings)
    assert await states(pg, survey.campaign_id) == {"bob@example.com": "suppressed:client_opt_out"}
    assert len(smtp[0].messages) == 1


async def test_bounce_list_suppresses_survey_and_marketing(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    await add_client(pg, "acme")
    handler = smtp[0]
    handler.on("gone@example.com", reply="550 5.1.1 No such user gone@example.com")
    first = await launch(pg, settings, csv_of("gone@example.com", "bob@example.com"))
    await run_workers(settings)
    assert await states(pg, first.campaign_id) == {
        "gone@example.com": "failed:hard_bounce",
        "bob@example.com": "sent",
    }
    survey = await launch(pg, settings, csv_of("gone@example.com"))
    marketing = await launch(
        pg, settings, csv_of("gone@example.com"), kind="marketing", template="marketing"
    )
    await run_workers(settings)
    for report in (survey, marketing):
        assert await states(pg, report.campaign_id) == {"gone@example.com": "suppressed:bounced"}
    assert received_by(handler.messages) == {"bob@example.com": 1}


async def test_opt_out_after_launch_before_sending_is_honoured(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    await add_client(pg, "acme")
    report = await launch(pg, settings, csv_of("ann@example.com", "bob@example.com"))
    await opt_out(pg, settings, "Ann@Example.com ", Scope("survey", "acme"))
    await run_workers(settings)
    assert await states(pg, report.campaign_id) == {
        "ann@example.com": "suppressed:client_opt_out",
        "bob@example.com": "sent",
    }
    assert received_by(smtp[0].messages) == {"bob@example.com": 1}


async def test_fail_closed_when_the_opt_out_check_cannot_run(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP, database_url: str
) -> None:
    await add_client(pg, "acme")
    report = await launch(pg, settings, csv_of("ann@example.com", "bob@example.com"))
    settings = settings.model_copy(update={"suppression_timeout_seconds": 0.5})
    blocker = await asyncpg.connect(database_url)
    tx = blocker.transaction()
    await tx.start()
    # The opt-out list is locked: the send-time check times out, as with a sick database.
    await blocker.execute("LOCK TABLE client_opt_outs IN ACCESS EXCLUSIVE MODE")
    workers = asyncio.ensure_future(run_workers(settings, timeout=30))
    await asyncio.sleep(3)
    assert smtp[0].messages == []
    assert set((await states(pg, report.campaign_id)).values()) == {"pending"}
    await tx.rollback()
    await blocker.close()
    await workers
    assert received_by(smtp[0].messages) == {"ann@example.com": 1, "bob@example.com": 1}


async def test_each_address_gets_one_message_despite_repeats_and_two_workers(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    await add_client(pg, "acme")
    emails = [f"person{i}@example.com" for i in range(60)]
    report = await launch(pg, settings, csv_of(*emails))
    assert settings.redis_url is not None
    redis = await queue.connect(settings.redis_url)
    await queue.enqueue_launch(redis, report.campaign_id)
    first, last = await pg.fetchrow(
        "SELECT min(id), max(id) FROM invitations WHERE campaign_id = $1", report.campaign_id
    )
    await redis.enqueue_job("send_batch", report.campaign_id, first, last)
    await redis.enqueue_job("send_batch", report.campaign_id, first, last)
    await redis.aclose()
    await run_workers(settings, count=2)

    assert received_by(smtp[0].messages) == dict.fromkeys(emails, 1)
    assert set((await states(pg, report.campaign_id)).values()) == {"sent"}
    status = await pg.fetchval("SELECT status FROM campaigns WHERE id = $1", report.campaign_id)
    assert status == "completed"


async def test_received_messages_are_complete_and_links_are_personal(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    await add_client(pg, "acme")
    rows = "email,first_name,locale\na@example.com,Zoë,nl\nb@example.com,Bob,fr\nc@example.com,,\n"
    await launch(pg, settings, rows)
    await run_workers(settings)

    survey_links = set()
    assert len(smtp[0].messages) == 3
    for received in smtp[0].messages:
        message = parse(received)
        assert message.get_content_type() == "multipart/alternative"
        text = message.get_body(("plain",))
        html = message.get_body(("html",))
        assert text is not None and html is not None
        link = message["List-Unsubscribe"].strip("<>")
        assert link.startswith("https://unsubscribe.test/unsubscribe/")
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert link in text.get_content()
        assert link in html.get_content()
        token = link.rsplit("/", 1)[1]
        claims = tokens.verify(settings.signing_keys(), token)
        assert claims is not None and claims.client_id is not None
        assert message["Message-ID"] and message["Date"] and message["List-Id"]
        survey = re.findall(r"https://survey\.test/s\?r=[\w-]+", text.get_content())
        survey_links.update(survey)
    assert len(survey_links) == 3


async def test_bad_csv_rows_are_reported_and_good_rows_sent(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    await add_client(pg, "acme")
    rows = (
        "email,first_name\n"
        "ok1@example.com,Ann\n"
        "not-an-address,Bob\n"
        '"ok2@example.com","Eve\r\nBcc: victim@example.com"\n'
        "ok1@example.com,Again\n"
        "ok3@example.com,Zed\n"
    )
    report = await launch(pg, settings, rows)
    assert report.imported == 2
    assert [(r.line, r.reason.split(":")[0]) for r in report.rejected] == [
        (3, "invalid address"),
        (4, "a value contains a line break or control character"),
        (6, "duplicate address (imported once)"),
    ]
    await run_workers(settings)
    assert received_by(smtp[0].messages) == {"ok1@example.com": 1, "ok3@example.com": 1}
    for received in smtp[0].messages:
        assert b"victim" not in received.data
        assert parse(received).get_all("Bcc") is None


async def test_a_value_no_header_can_carry_fails_its_invitation_alone(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP, tmp_path: Path
) -> None:
    # A template that puts a recipient's value in the subject as it is, without `oneline`.
    shutil.copytree(settings.templates_dir, tmp_path, dirs_exist_ok=True)
    (tmp_path / "invitation" / "en" / "subject.txt").write_text("Survey for {{ first_name }}")
    settings = settings.model_copy(update={"templates_dir": tmp_path})
    await add_client(pg, "acme")
    rows = (
        "email,first_name,name\n"
        "ann@example.com,Ann,\n"
        "bob@example.com,Bob,\n"
        "carol@example.com,Carol,\n"
        "dave@example.com,Dave,Dave\n"
        "eve@example.com,Eve,\n"
        "vt@example.com,\u000bBcc: victim@example.net,\n"
        "nel@example.com,Nel\u0085Bcc: victim@example.net,\n"
        "ls@example.com,,Ls\u2028Bcc: victim@example.net\n"
    )
    report = await launch(pg, settings, rows, enqueue=False)
    # A vertical tab, NEL or U+2028 never gets past the import ...
    assert [(r.line, r.reason) for r in report.rejected] == [
        (line, "a value contains a line break or control character") for line in (7, 8, 9)
    ]
    # ... but rows imported before those checks were added still reach the worker.
    for email, column, value in [
        ("ann@example.com", "first_name", "Ann\u2028Bcc: victim@example.net"),
        ("bob@example.com", "first_name", "Bob\u0085Bcc: victim@example.net"),
        ("dave@example.com", "name", "Dave\u2029Bcc: victim@example.net"),
        ("eve@example.com", "first_name", "Eve\x0bBcc: victim@example.net"),
    ]:
        await pg.execute(
            """UPDATE invitations SET vars = jsonb_set(vars, ARRAY[$2::text], to_jsonb($3::text))
               WHERE email = $1""",
            email,
            column,
            value,
        )
    assert settings.redis_url is not None
    redis = await queue.connect(settings.redis_url)
    await queue.enqueue_launch(redis, report.campaign_id)
    await redis.aclose()
    await run_workers(settings)

    assert await states(pg, report.campaign_id) == {
        "ann@example.com": "failed:unsafe_header_value",
        "bob@example.com": "failed:unsafe_header_value",
        "carol@example.com": "sent",
        "dave@example.com": "failed:unsafe_header_value",
        "eve@example.com": "failed:unsafe_header_value",
    }
    status = await pg.fetchval("SELECT status FROM campaigns WHERE id = $1", report.campaign_id)
    assert status == "completed"
    assert received_by(smtp[0].messages) == {"carol@example.com": 1}
    received = smtp[0].messages[0]
    assert b"victim" not in received.data
    assert parse(received)["Subject"] == "Survey for Carol"


async def test_campaign_logs_hold_no_clear_address_or_token(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    await add_client(pg, "acme")
    await opt_out(pg, settings, "ann@example.com", Scope("survey", "acme"))
    smtp[0].on("bad@example.com", reply="550 5.1.1 No such user bad@example.com")
    smtp[0].on("slow@example.com", reply="451 4.3.0 try again later", times=1)
    emails = ["ann@example.com", "bob@example.com", "bad@example.com", "slow@example.com"]
    structlog.reset_defaults()
    with capture_logs() as logs:
        await launch(pg, settings, csv_of(*emails))
        await run_workers(settings)
    dump = orjson.dumps(logs, default=str).decode()
    events = {entry["event"] for entry in logs}
    assert {
        "invitation.sent",
        "invitation.suppressed",
        "invitation.failed",
        "invitation.deferred",
        "campaign.launched",
        "campaign.completed",
    } <= events
    for address in emails:
        assert address not in dump
        assert address.split("@")[0] + "@" not in dump
    assert "/unsubscribe/" not in dump
    decision = next(e for e in logs if e["event"] == "invitation.sent")
    assert set(decision) >= {
        "campaign_id",
        "client_id",
        "invitation_id",
        "recipient",
        "smtp_code",
        "job_id",
    }
