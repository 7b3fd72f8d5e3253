"""`survey-worker inbound` as a mail exchanger meets it: the installed command, settings
from the environment, a real SMTP client, the job it queues run by a real worker."""

from __future__ import annotations

import json

import aiosmtplib
import asyncpg
import pytest

from tests.support.commands import inbound
from tests.support.pipeline import add_client, csv_of, launch, run_workers
from tests.support.reports import delivery_status
from tests.support.smtp import RecordingHandler
from tests.support.web import cli
from worker import verp
from worker.dev.embedded import free_port
from worker.settings import Settings

SMTP = tuple[RecordingHandler, int]
BOUNCE_DOMAIN = "bounces.test"


async def deliver(port: int, recipient: str, data: bytes) -> tuple[int, str]:
    """Send `data` to `recipient` as an MTA sends a bounce (null sender); the reply to the
    first refused command, or to DATA."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)
    await client.connect()
    try:
        await client.ehlo()
        await client.mail("")
        code, text = await client.execute_command(b"RCPT", f"TO:<{recipient}>".encode())
        if code != 250:
            return code, text
        try:
            response = await client.data(data)
        except aiosmtplib.SMTPDataError as e:
            return e.code, e.message
        return response.code, response.message
    finally:
        client.close()


async def test_a_bounce_to_a_verp_address_is_queued_and_recorded(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    settings = settings.model_copy(update={"bounce_domain": BOUNCE_DOMAIN})
    handler = smtp[0]
    await add_client(pg, "acme")
    campaign = await launch(pg, settings, csv_of("ann@example.com"))
    await run_workers(settings)
    [sent] = handler.messages
    async with inbound(settings) as port:
        code, text = await deliver(port, sent.sender.upper(), delivery_status(sent))
        assert (code, text.split()[0]) == (250, "2.0.0")
    await run_workers(settings)
    done = await cli(settings, "status", str(campaign.campaign_id), "--json")
    assert json.loads(done.stdout)["feedback"]["hard"] == 1
    assert await pg.fetchval("SELECT count(*) FROM bounces WHERE kind = 'hard'") == 1


async def test_only_genuine_verp_addresses_at_the_bounce_domain_are_taken(
    settings: Settings,
) -> None:
    key = settings.signing_keys()[0]
    genuine = verp.address(key, 7, BOUNCE_DOMAIN)
    forged = verp.address(b"not-our-key", 7, BOUNCE_DOMAIN)
    message = b"Subject: hello\r\n\r\nhello\r\n"
    async with inbound(settings, {"INBOUND_MAX_BYTES": "2000"}) as port:
        assert (await deliver(port, "postmaster@example.com", message))[0] == 550
        code, text = await deliver(port, genuine.replace(BOUNCE_DOMAIN, "example.com"), message)
        assert (code, text.split()[0]) == (550, "5.7.1")
        code, text = await deliver(port, forged, message)
        assert (code, text.split()[0]) == (550, "5.1.1")
        code, _ = await deliver(port, genuine, message + (b"x" * 70 + b"\r\n") * 50)
        assert code == 552
        assert (await deliver(port, genuine, message))[0] == 250


async def test_while_redis_is_away_a_message_is_deferred_not_lost(settings: Settings) -> None:
    genuine = verp.address(settings.signing_keys()[0], 7, BOUNCE_DOMAIN)
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    async with inbound(settings, {"REDIS_URL": nobody}) as port:
        code, text = await deliver(port, genuine, b"Subject: x\r\n\r\nx\r\n")
    assert (code, text.split()[0]) == (451, "4.3.0")


@pytest.mark.parametrize("domain", [None, "not a domain"])
async def test_inbound_without_a_usable_bounce_domain_says_so(
    settings: Settings, domain: str | None
) -> None:
    done = await cli(settings, "inbound", "--port", str(free_port()), env={"BOUNCE_DOMAIN": domain})
    assert done.code != 0
    assert "Traceback" not in done.stderr
    assert "BOUNCE_DOMAIN" in done.stderr
