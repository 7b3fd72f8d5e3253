"""The private Postfix of tests/support/postfix.py is a real relay: it delivers mail for a
routed domain to its SMTP server, and turns a refused recipient into a real delivery status
notification (RFC 3464) sent to the envelope sender, at once (5.x.x) or, for a recipient
it could only defer (4.x.x), when the queue lifetime runs out."""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.message import EmailMessage, Message
from typing import cast

import aiosmtplib
import pytest

from tests.faults.harness import wait_until
from tests.support.postfix import (
    GOOD,
    HARD,
    HOSTNAME,
    POLICY,
    SOFT,
    Postfix,
    postfix_relay,
    relay_routes,
)
from tests.support.smtp import RecordedMessage, RecordingHandler, start_smtp_server

SENDER = "b-envelope@bounces.test"
QUEUE_LIFETIME = 2


@dataclass(frozen=True)
class Servers:
    """The relay, and the recorders of its two destinations: good.example (`sink`) and the
    bounce domain (`bounces`)."""

    mta: Postfix
    sink: RecordingHandler
    bounces: RecordingHandler


@asynccontextmanager
async def relay() -> AsyncIterator[Servers]:
    """Postfix relaying good.example to one aiosmtpd server and the bounce domain (where
    the DSNs go) to another."""
    sink, bounces = RecordingHandler(), RecordingHandler()
    async with (
        start_smtp_server(sink) as sink_port,
        start_smtp_server(bounces) as bounce_port,
        postfix_relay(
            relay_routes(sink_port=sink_port, bounce_port=bounce_port),
            queue_lifetime=QUEUE_LIFETIME,
        ) as mta,
    ):
        yield Servers(mta, sink, bounces)


async def send(mta: Postfix, recipient: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Acme surveys <surveys@acme.example>"
    message["To"] = recipient
    message["Subject"] = "Your opinion"
    message["Message-ID"] = f"<invitation-1@{recipient.partition('@')[2]}>"
    message.set_content("Tell us what you think.\n")
    await aiosmtplib.send(
        message, hostname="127.0.0.1", port=mta.port, sender=SENDER, recipients=[recipient]
    )
    return message


def recipient_status(dsn: RecordedMessage) -> Message:
    """The per-recipient fields of a DSN's message/delivery-status part (RFC 3464 §2.3)."""
    report = email.message_from_bytes(dsn.data, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = [part for part in report.walk() if part.get_content_type() == "message/delivery-status"]
    assert len(parts) == 1
    # The parser gives the per-message fields, then one block per recipient.
    per_message, *per_recipient = cast("list[Message]", parts[0].get_payload())
    assert per_message["Reporting-MTA"] == f"dns; {HOSTNAME}"
    assert len(per_recipient) == 1
    return per_recipient[0]


def returned_message_id(dsn: RecordedMessage) -> str:
    """The Message-ID of the original message the DSN returns (its message/rfc822 part)."""
    report = email.message_from_bytes(dsn.data, policy=email.policy.default)
    (returned,) = [part for part in report.walk() if part.get_content_type() == "message/rfc822"]
    (original,) = cast("list[Message]", returned.get_payload())
    return str(original["Message-ID"])


async def test_mail_for_a_routed_domain_reaches_its_server_with_the_envelope_sender() -> None:
    async with relay() as servers:
        sent = await send(servers.mta, f"ann@{GOOD}")

        async def delivered() -> bool:
            return len(servers.sink.messages) == 1

        await wait_until(delivered, timeout=30, what="the relayed message")
        received = servers.sink.messages[0]
        assert (received.sender, received.recipients) == (SENDER, (f"ann@{GOOD}",))
        relayed = email.message_from_bytes(received.data, policy=email.policy.default)
        assert relayed["Message-ID"] == sent["Message-ID"]
        assert f"by {HOSTNAME} (Postfix)" in str(relayed["Received"])
        assert servers.bounces.messages == []


@pytest.mark.parametrize(
    ("domain", "status", "diagnostic"),
    [(HARD, "5.1.1", "mailbox unknown"), (POLICY, "5.7.1", "message refused by policy")],
)
async def test_a_refused_recipient_comes_back_at_once_as_a_dsn_to_the_envelope_sender(
    domain: str, status: str, diagnostic: str
) -> None:
    async with relay() as servers:
        sent = await send(servers.mta, f"bob@{domain}")

        async def returned() -> bool:
            return len(servers.bounces.messages) == 1

        await wait_until(returned, timeout=30, what="the DSN")
        dsn = servers.bounces.messages[0]
        # RFC 3464 §2: a DSN goes to the envelope sender, from the null reverse-path.
        assert (dsn.sender, dsn.recipients) == ("<>", (SENDER,))
        fields = recipient_status(dsn)
        assert fields["Final-Recipient"] == f"rfc822; bob@{domain}"
        assert (fields["Action"], fields["Status"]) == ("failed", status)
        assert fields["Diagnostic-Code"] == f"X-Postfix; {diagnostic}"
        assert returned_message_id(dsn) == sent["Message-ID"]
        assert servers.sink.messages == []


async def test_a_deferred_recipient_comes_back_with_its_4xx_status_when_the_queue_gives_up() -> (
    None
):
    async with relay() as servers:
        started = time.monotonic()
        await send(servers.mta, f"cat@{SOFT}")

        async def returned() -> bool:
            return len(servers.bounces.messages) == 1

        await wait_until(returned, timeout=30, what="the DSN of the expired message")
        waited = time.monotonic() - started
        dsn = servers.bounces.messages[0]
        assert (dsn.sender, dsn.recipients) == ("<>", (SENDER,))
        fields = recipient_status(dsn)
        assert fields["Final-Recipient"] == f"rfc822; cat@{SOFT}"
        assert (fields["Action"], fields["Status"]) == ("failed", "4.2.2")
        assert fields["Diagnostic-Code"] == "X-Postfix; mailbox full"
        # Deferred and retried first: Postfix counts the lifetime in whole seconds.
        log = servers.mta.log()
        assert log.count(f"to=<cat@{SOFT}>") >= 2, log
        assert "dsn=4.2.2, status=deferred (mailbox full)" in log
        assert "status=expired, returned to sender" in log
        assert waited > QUEUE_LIFETIME - 1
