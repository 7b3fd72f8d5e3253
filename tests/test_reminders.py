"""Reminders and the contact cap through real workers, Postgres, Redis and SMTP: rounds
reach only those who have not answered and are still allowed at the moment of the send;
the cap holds across clients and concurrent workers."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from tests.faults.harness import wait_until
from tests.support.admin import migrated_up_to
from tests.support.pipeline import (
    add_client,
    csv_of,
    enqueue_launch,
    launch,
    opt_out,
    parse,
    run_workers,
)
from tests.support.smtp import RecordedMessage, RecordingHandler
from tests.support.web import cli, email_hash, launch_args, private_logs
from worker import completion, db, ledger, suppression
from worker.errors import LaunchProblem
from worker.settings import Settings
from worker.suppression import Scope

SMTP = tuple[RecordingHandler, int]
INTERVAL = timedelta(seconds=1)


def survey_ref(message: RecordedMessage) -> str:
    text = parse(message).get_body(("plain",))
    assert text is not None
    match = re.search(r"https://survey\.test/s\?r=([A-Za-z0-9_-]+)", text.get_content())
    assert match is not None
    return match.group(1)


def to(handler: RecordingHandler, address: str) -> list[RecordedMessage]:
    return [m for m in handler.messages if m.recipients == (address,)]


async def status(settings: Settings, campaign_id: int) -> dict[str, object]:
    done = await cli(settings, "status", str(campaign_id), "--json")
    assert done.code == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


async def complete(pg: asyncpg.Pool, settings: Settings, message: RecordedMessage) -> None:
    """The survey platform reports the answer behind the message's survey link."""
    async with pg.acquire() as conn:
        report = await completion.complete(
            conn, [survey_ref(message)], hash_key=settings.hash_key()
        )
    assert report.as_json()["completed"] == 1


async def round_created(pg: asyncpg.Pool) -> None:
    """Create the due round's rows, as reconcile does, without a worker to send them."""

    async def created() -> bool:
        async with pg.acquire() as conn:
            return bool(await ledger.create_due_reminders(conn))

    await wait_until(created, timeout=10, what="a round to be created")


async def round_sent(pg: asyncpg.Pool, settings: Settings, round_: int, expected: int) -> None:
    """Run burst workers (each starts with a reconcile, which creates due rounds) until
    `expected` reminders of `round_` are final."""

    async def done() -> bool:
        await run_workers(settings)
        final = await pg.fetchval(
            """SELECT count(*) FROM invitations
               WHERE round = $1 AND state IN ('sent', 'suppressed', 'failed')""",
            round_,
        )
        return bool(final >= expected)

    await wait_until(done, timeout=30, what=f"round {round_}")


async def test_two_rounds_reach_only_those_who_have_not_answered_or_left(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    handler = smtp[0]
    await add_client(pg, "acme")
    people = ["ann@example.com", "bob@example.com", "cat@example.com", "dan@example.com"]
    # A day apart, and the test moves the clock a day at a time (the first messages'
    # acceptance back a day), so nothing is due before the test says so.
    day = timedelta(days=1)
    campaign = await launch(pg, settings, csv_of(*people), reminders=2, reminder_interval=day)

    async def a_day_passes() -> None:
        await pg.execute(
            "UPDATE invitations SET sent_at = sent_at - $1::interval WHERE round = 0", day
        )

    await run_workers(settings)
    assert len(handler.messages) == 4
    assert (await status(settings, campaign.campaign_id))["status"] == "running"
    # Ann answers, Bob unsubscribes, both before round 1.
    await complete(pg, settings, to(handler, "ann@example.com")[0])
    await opt_out(pg, settings, "bob@example.com", Scope("survey", "acme"))
    with private_logs() as logs:
        await run_workers(settings)
        assert len(handler.messages) == 4  # not due yet
        await a_day_passes()
        await round_sent(pg, settings, 1, expected=3)
        # Dan answers between round 1 and round 2.
        await complete(pg, settings, to(handler, "dan@example.com")[0])
        await a_day_passes()
        await round_sent(pg, settings, 2, expected=2)
    assert [len(to(handler, p)) for p in people] == [1, 1, 3, 2]
    first, *reminders = to(handler, "cat@example.com")
    for reminder in reminders:
        assert parse(reminder)["Subject"].startswith("Reminder: ")
        assert parse(reminder)["Message-ID"] != parse(first)["Message-ID"]
        # The reminder links to the same survey answer as the first message.
        assert survey_ref(reminder) == survey_ref(first)
    assert len({parse(m)["Message-ID"] for m in handler.messages}) == len(handler.messages)
    sent = [(e["event"], e.get("round")) for e in logs if e["event"].startswith("reminder.")]
    assert sent.count(("reminder.sent", 1)) == 2 and sent.count(("reminder.sent", 2)) == 1
    assert ("reminder.suppressed", 1) in sent and ("reminder.suppressed", 2) in sent
    report = await status(settings, campaign.campaign_id)
    assert report["status"] == "completed"
    assert report["counts"] == {"sent": 4}
    rounds = report["reminders"]
    assert isinstance(rounds, list)
    assert [(r["round"], r["sent"], r["suppressed"]) for r in rounds] == [(1, 2, 1), (2, 1, 1)]
    assert all(r["due_at"] for r in rounds)


async def test_a_completion_after_the_round_was_created_stops_its_send(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    handler = smtp[0]
    await add_client(pg, "acme")
    campaign = await launch(
        pg, settings, csv_of("ann@example.com"), reminders=1, reminder_interval=INTERVAL
    )
    await run_workers(settings)

    await round_created(pg)
    # The platform's word arrives after the row exists and before any worker sends it.
    await complete(pg, settings, handler.messages[0])
    await enqueue_launch(settings, campaign.campaign_id)
    await round_sent(pg, settings, 1, expected=1)
    row = await pg.fetchrow("SELECT state, reason FROM invitations WHERE round = 1")
    assert dict(row) == {"state": "suppressed", "reason": "completed"}
    assert len(handler.messages) == 1


async def test_a_completion_between_a_rounds_claim_and_its_send_stops_that_reminder(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    """Each reminder is a slice of its own: both are claimed at once, and one waits for
    the worker's window while the other is on the wire. An answer arriving for the one
    that waits stops it: the check in the window reads the completion."""
    handler = smtp[0]
    one_by_one = settings.model_copy(update={"slice_size": 1, "chunk_size": 1})
    people = ("ann@example.com", "bob@example.com")
    await add_client(pg, "acme")
    campaign = await launch(
        pg, one_by_one, csv_of(*people), reminders=1, reminder_interval=INTERVAL
    )
    await run_workers(one_by_one)
    firsts = {m.recipients[0]: m for m in handler.messages}

    await round_created(pg)
    # Whichever reminder reaches DATA first stays there, in the worker's window.
    release = asyncio.Event()
    handler.on(*people, stage="DATA", until=release, times=1)
    await enqueue_launch(one_by_one, campaign.campaign_id)
    sending = asyncio.create_task(run_workers(one_by_one))
    try:

        async def one_held() -> bool:
            return bool(handler.held)

        await wait_until(one_held, timeout=30, what="a reminder held at DATA")
        [(_, held)] = handler.held
        [waiting] = [p for p in people if p != held]

        async def claimed() -> bool:
            # A claim is a row lock, and nothing else locks a reminder's row: a pending
            # row with a locker (xmax) is claimed and not yet checked.
            return bool(
                await pg.fetchval(
                    """SELECT xmax::text <> '0' FROM invitations
                       WHERE round = 1 AND email_hash = $1 AND state = 'pending'""",
                    email_hash(one_by_one, waiting),
                )
            )

        await wait_until(claimed, timeout=30, what="the other reminder to be claimed")
        await complete(pg, one_by_one, firsts[waiting])
    finally:
        release.set()
        await sending
    rows = await pg.fetch("SELECT email, state, reason FROM invitations WHERE round = 1")
    assert {r["email"]: (r["state"], r["reason"]) for r in rows} == {
        held: ("sent", None),
        waiting: ("suppressed", "completed"),
    }
    assert [m.recipients for m in handler.messages[2:]] == [(held,)]


async def test_a_due_round_looks_at_new_acceptances_until_the_pass_that_completes_it(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    """While a round is due but not complete, each pass makes the rows of the first
    messages accepted since the pass before (not the whole campaign again); the pass that
    completes the round looks at all of them, so an acceptance that committed late is not
    missed."""
    await add_client(pg, "acme")
    people = ("ann@example.com", "bob@example.com", "cat@example.com", "dan@example.com")
    campaign = await launch(
        pg, settings, csv_of(*people), reminders=1, reminder_interval=INTERVAL, enqueue=False
    )

    async def accepted(address: str, ago: timedelta) -> None:
        await pg.execute(
            """UPDATE invitations SET state = 'sent', sent_at = now() - $2::interval
               WHERE email = $1 AND round = 0""",
            address,
            ago,
        )

    async def reminded() -> set[str]:
        rows = await pg.fetch("SELECT email FROM invitations WHERE round = 1")
        return {r["email"] for r in rows}

    async def a_pass() -> list[int]:
        async with pg.acquire() as conn:
            return await ledger.create_due_reminders(conn)

    # Ann and Bob were accepted an hour ago; Cat and Dan are still open.
    for address in people[:2]:
        await accepted(address, timedelta(hours=1))
    assert await a_pass() == [campaign.campaign_id]
    assert await reminded() == set(people[:2])
    # Dan's acceptance commits late: older than where that pass stopped looking.
    await accepted("dan@example.com", timedelta(hours=1))
    assert await a_pass() == []
    assert await reminded() == set(people[:2])
    # Cat is accepted and due: the round is complete, and its last pass looks at everyone.
    await accepted("cat@example.com", timedelta(seconds=2))
    assert await a_pass() == [campaign.campaign_id]
    assert await reminded() == set(people)
    assert await pg.fetchval("SELECT reminder_rounds_created FROM campaigns") == 1
    assert await pg.fetchval("SELECT count(*) FROM reminder_scans") == 0


async def test_a_paused_campaign_sends_no_reminder_until_it_resumes(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    handler = smtp[0]
    await add_client(pg, "acme")
    campaign = await launch(
        pg, settings, csv_of("ann@example.com"), reminders=1, reminder_interval=INTERVAL
    )
    await run_workers(settings)
    assert (await cli(settings, "pause", str(campaign.campaign_id))).code == 0
    sent_at = await pg.fetchval("SELECT sent_at FROM invitations WHERE round = 0")
    await wait_until(
        lambda: _past(pg, sent_at + 2 * INTERVAL), timeout=10, what="the round to be due"
    )
    await run_workers(settings)
    assert await pg.fetchval("SELECT count(*) FROM invitations WHERE round = 1") == 0
    assert len(handler.messages) == 1
    assert (await cli(settings, "resume", str(campaign.campaign_id))).code == 0
    await round_sent(pg, settings, 1, expected=1)
    assert len(handler.messages) == 2


async def _past(pg: asyncpg.Pool, moment: object) -> bool:
    return bool(await pg.fetchval("SELECT now() > $1", moment))


@pytest.fixture
def capped(settings: Settings) -> Settings:
    return settings.model_copy(update={"contact_cap": "1/1d"})


async def test_the_contact_cap_holds_across_clients_and_concurrent_workers(
    pg: asyncpg.Pool, capped: Settings, smtp: SMTP
) -> None:
    handler = smtp[0]
    people = [f"p{n}@example.com" for n in range(30)]
    for client in ("acme", "globex", "initech"):
        await add_client(pg, client)
        await launch(pg, capped, csv_of(*people), client_id=client)
    with private_logs() as logs:
        await run_workers(capped, count=3)
    # Each person got exactly one first invitation, from whichever client came first.
    assert sorted(m.recipients[0] for m in handler.messages) == sorted(people)
    reasons = await pg.fetch(
        "SELECT reason, count(*) AS n FROM invitations WHERE state = 'suppressed' GROUP BY 1"
    )
    assert [dict(r) for r in reasons] == [{"reason": "contact_cap", "n": 60}]
    assert sum(e["event"] == "invitation.suppressed" for e in logs) == 60


async def test_the_cap_counts_neither_reminders_nor_marketing_and_survives_erasure(
    pg: asyncpg.Pool, capped: Settings, smtp: SMTP
) -> None:
    handler = smtp[0]
    await add_client(pg, "acme")
    await add_client(pg, "globex")
    await launch(pg, capped, csv_of("ann@example.com"), reminders=1, reminder_interval=INTERVAL)
    await run_workers(capped)
    # The reminder of the survey Ann already received is not a new contact.
    await round_sent(pg, capped, 1, expected=1)
    await launch(pg, capped, csv_of("ann@example.com"), kind="marketing", template="marketing")
    await run_workers(capped)
    assert len(handler.messages) == 3
    erased = await cli(capped, "erase", "ann@example.com", "--actor", "privacy@firm.example")
    assert erased.code == 0, erased.stderr
    await launch(pg, capped, csv_of("ann@example.com"), client_id="globex")
    await run_workers(capped)
    assert len(handler.messages) == 3
    hashed = email_hash(capped, "ann@example.com")
    assert (
        await pg.fetchval(
            "SELECT cardinality(invitation_ids) FROM contact_counts WHERE email_hash = $1", hashed
        )
        == 1
    )
    assert (
        await pg.fetchval(
            "SELECT i.reason FROM invitations i JOIN campaigns c ON c.id = i.campaign_id "
            "WHERE c.client_id = 'globex'"
        )
        == "contact_cap"
    )


async def test_launch_takes_reminders_from_the_command_line(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    await add_client(pg, "acme")
    recipients = tmp_path / "people.csv"
    recipients.write_text(csv_of("ann@example.com"))
    args = ["--reminders", "2", "--reminder-interval", "3d", "--json"]
    done = await cli(settings, *launch_args(recipients), *args)
    assert done.code == 0, done.stderr
    campaign_id = json.loads(done.stdout)["campaign_id"]
    row = await pg.fetchrow("SELECT reminders, reminder_interval FROM campaigns")
    assert (row["reminders"], row["reminder_interval"]) == (2, timedelta(days=3))
    report = await status(settings, campaign_id)
    assert report["reminders"] == [
        {"round": 1, "due_at": None, "sent": 0, "suppressed": 0},
        {"round": 2, "due_at": None, "sent": 0, "suppressed": 0},
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--reminders", "2"], "--reminders needs --reminder-interval"),
        (["--reminder-interval", "3d"], "--reminder-interval needs --reminders"),
        (["--reminders", "11", "--reminder-interval", "3d"], "--reminders"),
        (["--reminders", "1", "--reminder-interval", "3 days"], "duration such as"),
        (["--reminders", "1", "--reminder-interval", "0s"], "more than nothing"),
        (
            ["--kind", "marketing", "--reminders", "1", "--reminder-interval", "3d"],
            "Error: --reminders is only for survey campaigns; --kind marketing sends no reminders",
        ),
    ],
)
async def test_launch_refuses_reminder_options_that_cannot_work(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path, args: list[str], expected: str
) -> None:
    await add_client(pg, "acme")
    recipients = tmp_path / "people.csv"
    recipients.write_text(csv_of("ann@example.com"))
    done = await cli(settings, *launch_args(recipients), *args)
    assert done.code != 0
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_a_marketing_campaign_with_reminders_is_refused_for_the_api_too(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    """The refusal lives in `campaigns.launch`, which the client API's launch runs."""
    await add_client(pg, "acme")
    with pytest.raises(LaunchProblem) as refused:
        await launch(
            pg,
            settings,
            csv_of("ann@example.com"),
            kind="marketing",
            reminders=2,
            reminder_interval=timedelta(days=3),
            enqueue=False,
        )
    assert refused.value.api_message() == (
        "reminders is only for survey campaigns; kind marketing sends no reminders"
    )
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_a_marketing_campaign_stored_with_reminders_gets_none_and_none_can_be_stored(
    database_url: str, tmp_path: Path
) -> None:
    # Before launches refused them, a marketing campaign could be stored with reminders.
    async with migrated_up_to(database_url, 13, tmp_path) as conn:
        await conn.execute(
            "INSERT INTO clients (id, name, sender_email) VALUES ('acme', 'Acme', 'a@acme.example')"
        )
        insert = """INSERT INTO campaigns (client_id, name, kind, template, locale, survey_url,
                                           reminders, reminder_interval)
                    VALUES ('acme', 'm', $1, 'marketing', 'en', '', 2, '1 day') RETURNING id"""
        marketing = await conn.fetchval(insert, "marketing")
        survey = await conn.fetchval(insert, "survey")
        assert "014_marketing_sends_no_reminders.sql" in await db.migrate(conn)
        reminders = dict(await conn.fetch("SELECT id, reminders FROM campaigns"))
        assert reminders == {marketing: 0, survey: 2}
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.fetchval(insert, "marketing")


async def test_a_deferred_first_invitation_is_counted_once_however_often_it_is_retried(
    pg: asyncpg.Pool, capped: Settings, smtp: SMTP
) -> None:
    handler = smtp[0]
    handler.on("ann@example.com", reply="451 4.3.0 Try later", times=2)
    await add_client(pg, "acme")
    await launch(pg, capped, csv_of("ann@example.com"))

    async def delivered() -> bool:
        await run_workers(capped)
        return len(handler.messages) == 1

    await wait_until(delivered, timeout=30, what="the third attempt")
    row = await pg.fetchrow("SELECT state, attempts FROM invitations")
    assert (row["state"], row["attempts"]) == ("sent", 3)
    assert await pg.fetchval("SELECT sum(cardinality(invitation_ids)) FROM contact_counts") == 1


async def test_a_person_the_client_may_not_mail_is_not_counted(
    pg: asyncpg.Pool, capped: Settings, smtp: SMTP
) -> None:
    handler = smtp[0]
    await add_client(pg, "acme")
    await add_client(pg, "globex")
    await opt_out(pg, capped, "ann@example.com", Scope("survey", "acme"))
    await launch(pg, capped, csv_of("ann@example.com"))
    await run_workers(capped)
    await launch(pg, capped, csv_of("ann@example.com"), client_id="globex")
    await run_workers(capped)
    # Acme may not mail Ann, so Acme's invitation is no contact: Globex's reaches her.
    assert [m.recipients for m in handler.messages] == [("ann@example.com",)]
    rows = await pg.fetch(
        "SELECT c.client_id, i.state, i.reason FROM invitations i "
        "JOIN campaigns c ON c.id = i.campaign_id ORDER BY c.id"
    )
    assert [tuple(r) for r in rows] == [
        ("acme", "suppressed", "client_opt_out"),
        ("globex", "sent", None),
    ]


async def test_the_installed_commands_keep_contact_cap_and_send_reminders(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP, tmp_path: Path
) -> None:
    """The user's path: `client add`, `launch --reminders`, `worker --burst` and `status`
    as processes, CONTACT_CAP from the environment. Each burst worker starts with a
    reconcile, which creates the rounds that are due."""
    handler = smtp[0]
    env = {"CONTACT_CAP": "1/1d"}
    recipients = tmp_path / "people.csv"
    recipients.write_text(csv_of("ann@example.com", "bob@example.com"))
    launched = []
    for client in ("acme", "globex"):
        added = await cli(
            settings,
            "client",
            "add",
            client,
            "--name",
            client.title(),
            "--sender",
            f"surveys@{client}.example",
            env=env,
        )
        assert added.code == 0, added.stderr
        args = ["--reminders", "1", "--reminder-interval", "1s", "--json"]
        done = await cli(settings, *launch_args(recipients, client_id=client), *args, env=env)
        assert done.code == 0, done.stderr
        launched.append(json.loads(done.stdout)["campaign_id"])

    async def both_completed() -> bool:
        ran = await cli(settings, "worker", "--burst", env=env)
        assert ran.code == 0, ran.stderr
        reports = [await status(settings, c) for c in launched]
        return all(r["status"] == "completed" for r in reports)

    await wait_until(both_completed, timeout=60, what="both campaigns to complete")
    # One first invitation each (the cap), and its reminder, which the cap does not count.
    assert sorted(m.recipients[0] for m in handler.messages) == [
        "ann@example.com",
        "ann@example.com",
        "bob@example.com",
        "bob@example.com",
    ]
    sent = capped = 0
    for campaign_id in launched:
        report = await status(settings, campaign_id)
        counts, reasons = report["counts"], report["reasons"]
        assert isinstance(counts, dict) and isinstance(reasons, dict)
        sent += counts.get("sent", 0)
        capped += reasons.get("suppressed:contact_cap", 0)
    assert (sent, capped) == (2, 2)


async def test_the_counts_made_before_the_migration_carry_over(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    ann, bob = (email_hash(settings, f"{who}@example.com") for who in ("ann", "bob"))
    # A database migrated up to 009, which counted contacts a row per invitation.
    async with migrated_up_to(database_url, 9, tmp_path) as conn:
        await conn.execute(
            """INSERT INTO contacts (invitation_id, email_hash, counted_at) VALUES
               (2, $1, now() - interval '2 days'), (1, $1, now() - interval '3 days'),
               (3, $2, now() - interval '40 days')""",
            ann,
            bob,
        )
        assert "010_contact_counts.sql" in await db.migrate(conn)
        rows = await conn.fetch(
            "SELECT email_hash, invitation_ids FROM contact_counts ORDER BY invitation_ids"
        )
        assert [(r["email_hash"], r["invitation_ids"]) for r in rows] == [(ann, [1, 2]), (bob, [3])]
        async with conn.transaction():
            over = await suppression.count_contacts(
                conn, {10: ann, 11: bob}, cap=2, window=timedelta(days=30), timeout=5
            )
    # Ann had her two in 30 days; Bob's one is older than the window.
    assert over == {10}
