"""The feedback loop as a user runs it, through a real MTA: `survey-worker launch` and a
`survey-worker worker` sending through a private Postfix with BOUNCE_DOMAIN set, Postfix
bouncing what its transport map refuses as real DSNs to the VERP envelope senders, and
`survey-worker inbound` taking them back for the worker to record."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import asyncpg

from tests.faults.harness import wait_until
from tests.support.commands import BOUNCE_DOMAIN, inbound, running
from tests.support.pipeline import add_client, csv_of, parse
from tests.support.postfix import (
    GOOD,
    HARD,
    HOSTNAME,
    POLICY,
    SOFT,
    postfix_relay,
    relay_routes,
)
from tests.support.smtp import RecordedMessage, RecordingHandler
from tests.support.web import cli, email_hash, launch_args
from worker import verp
from worker.settings import Settings

SMTP = tuple[RecordingHandler, int]
# Postfix gives up on the deferred soft.example message after this many seconds.
QUEUE_LIFETIME = 2
ANN, BOB, CAT, DAN = f"ann@{GOOD}", f"bob@{HARD}", f"cat@{POLICY}", f"dan@{SOFT}"


async def launched(settings: Settings, recipients: Path, env: Mapping[str, str]) -> int:
    """`survey-worker launch` of a campaign to `recipients`; its id."""
    done = await cli(settings, *launch_args(recipients), "--json", env=env)
    assert done.code == 0, done.stderr
    campaign_id: int = json.loads(done.stdout)["campaign_id"]
    return campaign_id


async def status_when(
    settings: Settings,
    campaign_id: int,
    env: Mapping[str, str],
    done: Callable[[dict[str, Any]], bool],
    what: str,
) -> dict[str, Any]:
    """Poll `survey-worker status CAMPAIGN --json` until `done` holds; the last report."""
    last: dict[str, Any] = {}

    async def check() -> bool:
        nonlocal last
        result = await cli(settings, "status", str(campaign_id), "--json", env=env)
        assert result.code == 0, result.stderr
        last = json.loads(result.stdout)
        # A failed campaign never gets there: say so now rather than after the timeout.
        assert last["status"] != "failed", last
        return done(last)

    try:
        await wait_until(check, timeout=60, what=what)
    except AssertionError as e:
        e.add_note(f"last status: {last}")
        raise
    return last


async def invitations(pool: asyncpg.Pool, campaign_id: int) -> dict[str, int]:
    """Each invitation id of the campaign by address."""
    rows = await pool.fetch("SELECT id, email FROM invitations WHERE campaign_id = $1", campaign_id)
    return {r["email"]: r["id"] for r in rows}


async def only_message(sink: RecordingHandler) -> RecordedMessage:
    """The one message the sink receives (Postfix relays it a moment after taking it)."""

    async def arrived() -> bool:
        return len(sink.messages) >= 1

    await wait_until(arrived, timeout=30, what="the message relayed to good.example")
    [message] = sink.messages
    return message


async def test_postfix_bounces_come_back_through_inbound_and_the_hard_one_is_not_sent_again(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP, tmp_path: Path
) -> None:
    sink, sink_port = smtp
    await add_client(pg, "acme")
    recipients = tmp_path / "people.csv"
    recipients.write_text(csv_of(ANN, BOB, CAT, DAN))
    key = settings.signing_keys()[0]

    async with (
        inbound(settings) as inbound_port,
        postfix_relay(
            relay_routes(sink_port=sink_port, bounce_port=inbound_port),
            queue_lifetime=QUEUE_LIFETIME,
        ) as mta,
    ):
        # The user's environment: the worker sends through Postfix, with VERP senders.
        env = {
            "BOUNCE_DOMAIN": BOUNCE_DOMAIN,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(mta.port),
            "SMTP_TLS": "none",
        }
        async with running(settings, "worker", env=env) as worker:
            first = await launched(settings, recipients, env)
            # Postfix takes all four; the three it refuses come back as DSNs, two at once,
            # the deferred one when its queue lifetime runs out.
            report = await status_when(
                settings,
                first,
                env,
                lambda r: r["feedback"] == {"hard": 1, "soft": 1, "policy": 1, "complaints": 0},
                what="one hard, one policy and one soft bounce",
            )
            assert (report["status"], report["counts"]) == ("completed", {"sent": 4})
            first_ids = await invitations(pg, first)

            delivered = await only_message(sink)
            assert delivered.recipients == (ANN,)
            # The envelope names ann's invitation at the bounce domain; From still the client.
            assert verp.invitation_of([key], delivered.sender, BOUNCE_DOMAIN) == first_ids[ANN]
            message = parse(delivered)
            assert message["From"] == "Acme <surveys@acme.example>"
            assert f"by {HOSTNAME} (Postfix)" in str(message["Received"])

            # Recorded from the DSNs inbound took (source verp), with Postfix's statuses.
            recorded = await pg.fetch(
                "SELECT invitation_id, kind, status, source FROM feedback WHERE campaign_id = $1",
                first,
            )
            assert {tuple(r) for r in recorded} == {
                (first_ids[BOB], "hard", "5.1.1", "verp"),
                (first_ids[CAT], "policy", "5.7.1", "verp"),
                (first_ids[DAN], "soft", "4.2.2", "verp"),
            }
            listed = await pg.fetch("SELECT email_hash, kind FROM bounces")
            assert [tuple(r) for r in listed] == [(email_hash(settings, BOB), "hard")]

            sink.messages.clear()
            second = await launched(settings, recipients, env)
            report = await status_when(
                settings,
                second,
                env,
                lambda r: r["status"] == "completed",
                what="the second campaign to complete",
            )
            assert report["reasons"] == {"suppressed:bounced": 1}
            assert report["counts"] == {"sent": 3, "suppressed": 1}, report
            second_ids = await invitations(pg, second)
            again = await only_message(sink)
            assert again.recipients == (ANN,)
            assert verp.invitation_of([key], again.sender, BOUNCE_DOMAIN) == second_ids[ANN]

            # Postfix was handed the other three (each Message-ID names its invitation),
            # never bob's.
            def handed(address: str) -> str:
                return f"message-id=<invitation-{second_ids[address]}@acme.example>"

            async def handed_over() -> bool:
                return all(handed(a) in mta.log() for a in (ANN, CAT, DAN))

            await wait_until(handed_over, timeout=30, what="Postfix's log of the three")
            assert handed(BOB) not in mta.log()

        # Neither a VERP address (assert_private, on leaving `running` and `inbound`) nor
        # a bare VERP token was logged.
        for invitation_id in [*first_ids.values(), *second_ids.values()]:
            token = verp.address(key, invitation_id, BOUNCE_DOMAIN).partition("@")[0]
            assert token not in worker.output
