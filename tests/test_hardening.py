"""Hostile input found by attacking the product, each refused or contained where it belongs:
survey links, header values, the unsubscribe link's visibility, client names, and a
template a worker does not have."""

from __future__ import annotations

import asyncio
import io
import shutil
from pathlib import Path

import asyncpg
import orjson
import pytest

from tests.support.pipeline import add_client, csv_of, launch, parse, received_by, run_workers
from tests.support.smtp import RecordingHandler
from tests.support.web import cli, launch_args, private_logs
from worker import campaigns, queue
from worker.render import TemplateStore
from worker.settings import Settings

SMTP = tuple[RecordingHandler, int]


async def launch_file(
    pool: asyncpg.Pool, settings: Settings, csv_text: str, *, survey_url: str | None
) -> campaigns.LaunchReport:
    """Import a survey campaign for acme from CSV text, with or without --survey-url, and
    enqueue it."""
    async with pool.acquire() as conn:
        report = await campaigns.launch(
            conn,
            campaigns.LaunchRequest(
                client_id="acme",
                template="invitation",
                kind="survey",
                survey_url=survey_url,
                name="test",
                locale="en",
            ),
            io.BytesIO(csv_text.encode()),
            templates=TemplateStore(settings.templates_dir),
            hash_key=settings.hash_key(),
            progress=lambda _n: None,
        )
    assert settings.redis_url is not None
    redis = await queue.connect(settings.redis_url)
    await queue.enqueue_launch(redis, report.campaign_id)
    await redis.aclose()
    return report


async def states(pool: asyncpg.Pool, campaign_id: int) -> dict[str, str]:
    rows = await pool.fetch(
        "SELECT email, state, reason FROM invitations WHERE campaign_id = $1", campaign_id
    )
    return {r["email"]: r["state"] + (f":{r['reason']}" if r["reason"] else "") for r in rows}


@pytest.mark.parametrize(
    ("survey_url", "reason"),
    [
        ("javascript:alert(document.cookie)", "is not an http:// or https:// URL"),
        ("see our website", "contains a space or control character"),
        ("https://survey.example/s\r\nBcc: x@example.com", "contains a space or control character"),
        ("https://", "has no host"),
    ],
)
async def test_a_bad_survey_url_refuses_the_whole_launch(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path, survey_url: str, reason: str
) -> None:
    await add_client(pg, "acme")
    recipients = tmp_path / "people.csv"
    recipients.write_text("email\nann@example.com\n")
    done = await cli(settings, *launch_args(recipients, survey_url=survey_url))
    assert done.code == 1
    assert done.stderr == f"Error: --survey-url {reason}\n"
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 0
    assert await pg.fetchval("SELECT count(*) FROM invitations") == 0


async def test_a_bad_survey_url_cell_rejects_its_line_alone(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    await add_client(pg, "acme")
    rows = (
        "email,survey_url\n"
        "ok@example.com,https://survey.example/s/ok\n"
        "js@example.com,javascript:alert(1)\n"
        "text@example.com,take the survey\n"
        'crlf@example.com,"https://survey.example/s\r\nBcc: victim@example.com"\n'
        "ls@example.com,https://survey.example/s\u2028Bcc: victim@example.com\n"
        "nohost@example.com,https:///s\n"
        "empty@example.com,\n"
    )
    report = await launch_file(pg, settings, rows, survey_url=None)
    assert report.imported == 1
    assert [(r.line, r.reason) for r in report.rejected] == [
        (3, "survey_url is not an http:// or https:// URL"),
        (4, "survey_url contains a space or control character"),
        (5, "a value contains a line break or control character"),
        # Line 5's quoted value takes two lines of the file.
        (7, "a value contains a line break or control character"),
        (8, "survey_url has no host"),
        (9, "survey_url is empty and no --survey-url was given"),
    ]
    # With a campaign-wide --survey-url, an empty cell takes it instead.
    fallback = await launch_file(
        pg, settings, "email,survey_url\nempty@example.com,\n", survey_url="https://s.example/"
    )
    assert (fallback.imported, fallback.rejected) == (1, [])
    await run_workers(settings)
    assert received_by(smtp[0].messages) == {"ok@example.com": 1, "empty@example.com": 1}
    ok = next(m for m in smtp[0].messages if m.recipients == ("ok@example.com",))
    body = parse(ok).get_body(("plain",))
    assert body is not None and "https://survey.example/s/ok\r\n" in body.get_content()


NAME_REFUSED = "Error: --name must not hold a line break or control character\n"


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (["--name", "Acme\r\nBcc: victim@example.com"], NAME_REFUSED),
        (["--name", "Acme\nResearch"], NAME_REFUSED),
        (["--name", "Acme\rResearch"], NAME_REFUSED),
        (["--name", "Acme\tResearch"], NAME_REFUSED),
        (["--name", "Acme\x0bResearch"], NAME_REFUSED),
        (["--name", "Acme\x1b[31mResearch"], NAME_REFUSED),
        (["--name", "Acme\x85Research"], NAME_REFUSED),
        (["--name", "Acme\u2028Research"], NAME_REFUSED),
        (["--name", "Acme\u2029Research"], NAME_REFUSED),
        (["--name", "\u202eAcme"], NAME_REFUSED),
        (["--name", "   "], "Error: --name must not be blank\n"),
        (["--name", ""], "Error: --name must not be blank\n"),
        (["--name", "A" * 201], "Error: --name must be at most 200 characters\n"),
        (
            ["--sender", "surveys at acme"],
            "Error: --sender is not a usable address: invalid syntax\n",
        ),
        (
            ["--sender", "surveys@acme.example\r\nBcc: victim@example.com"],
            "Error: --sender is not a usable address: contains a control character\n",
        ),
    ],
)
async def test_client_add_refuses_what_no_message_could_carry(
    pg: asyncpg.Pool, settings: Settings, options: list[str], error: str
) -> None:
    given = dict(zip(options[::2], options[1::2], strict=True))
    args = {"--name": "Acme Research", "--sender": "surveys@acme.example", **given}
    done = await cli(settings, "client", "add", "acme", *(x for kv in args.items() for x in kv))
    assert done.code == 1
    assert done.stderr == error
    assert done.stdout == ""
    assert await pg.fetchval("SELECT count(*) FROM clients") == 0


async def test_client_add_keeps_a_good_client_when_an_update_is_refused(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    added = await cli(
        settings, "client", "add", "acme", "--name", "  Zoë Müller & Co ", "--sender", "s@a.example"
    )
    assert added.code == 0, added.stderr
    refused = await cli(
        settings, "client", "add", "acme", "--name", "Acme\r\nX", "--sender", "t@a.example"
    )
    assert refused.code == 1 and refused.stderr == NAME_REFUSED
    row = await pg.fetchrow("SELECT name, sender_email FROM clients WHERE id = 'acme'")
    assert tuple(row) == ("Zoë Müller & Co", "s@a.example")


async def test_a_worker_without_the_template_waits_for_it(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP, tmp_path: Path
) -> None:
    await add_client(pg, "acme")
    report = await launch(pg, settings, csv_of("ann@example.com", "bob@example.com"))
    # This worker's TEMPLATES_DIR lacks the campaign's template: a deployment not there yet.
    templates = tmp_path / "templates"
    templates.mkdir()
    worker_settings = settings.model_copy(update={"templates_dir": templates})
    with private_logs() as logs:
        worker = asyncio.create_task(run_workers(worker_settings))
        while not any(e["event"] == "template.missing" for e in logs):
            assert not worker.done()
            await asyncio.sleep(0.05)
        missing = next(e for e in logs if e["event"] == "template.missing")
        assert missing["campaign_id"] == report.campaign_id
        assert missing["template"] == "invitation"
        assert await states(pg, report.campaign_id) == {
            "ann@example.com": "pending",
            "bob@example.com": "pending",
        }
        status = await pg.fetchval("SELECT status FROM campaigns WHERE id = $1", report.campaign_id)
        assert status == "running"
        assert smtp[0].messages == []
        # The deployment arrives, all at once.
        shutil.copytree(settings.templates_dir / "invitation", tmp_path / "staging")
        (tmp_path / "staging").rename(templates / "invitation")
        await asyncio.wait_for(worker, 60)
    assert await states(pg, report.campaign_id) == {
        "ann@example.com": "sent",
        "bob@example.com": "sent",
    }
    status = await pg.fetchval("SELECT status FROM campaigns WHERE id = $1", report.campaign_id)
    assert status == "completed"
    assert received_by(smtp[0].messages) == {"ann@example.com": 1, "bob@example.com": 1}
    assert "campaign.failed" not in {e["event"] for e in logs}


LINK_LINE = '<p style="margin: 0; font-size: 14px; color: #555555;"><a href="{{ unsubscribe_url }}"'


async def test_the_installed_commands_refuse_a_hidden_unsubscribe_link(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP, tmp_path: Path
) -> None:
    """`launch` refuses a template that hides the link; `worker --burst` fails a campaign
    in which one recipient's value styles it away, before any message of its chunk leaves.
    TEMPLATES_DIR comes from the environment."""
    await add_client(pg, "acme")
    templates = tmp_path / "templates"
    shutil.copytree(settings.templates_dir, templates)
    body = templates / "invitation" / "en" / "body.html"
    original = body.read_text()
    assert LINK_LINE in original
    env = {"TEMPLATES_DIR": str(templates)}
    recipients = tmp_path / "people.csv"
    recipients.write_text(
        "email,mood\nann@example.com,color: green\nbob@example.com,display: none\n"
    )

    body.write_text(original.replace(LINK_LINE, LINK_LINE.replace("margin: 0;", "display: none;")))
    refused = await cli(settings, *launch_args(recipients), env=env)
    assert refused.code == 1
    assert "body.html does not show the unsubscribe link" in refused.stderr

    body.write_text(original.replace(LINK_LINE, LINK_LINE.replace("margin: 0;", "{{ mood }};")))
    launched = await cli(settings, *launch_args(recipients), "--json", env=env)
    assert launched.code == 0, launched.stderr
    campaign_id = orjson.loads(launched.stdout)["campaign_id"]
    ran = await cli(settings, "worker", "--burst", env=env)
    assert ran.code == 0, ran.stderr
    row = await pg.fetchrow("SELECT status, reason FROM campaigns WHERE id = $1", campaign_id)
    assert row["status"] == "failed"
    assert "body.html does not show the unsubscribe link" in row["reason"]
    assert smtp[0].messages == []
