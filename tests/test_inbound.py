"""`survey-worker inbound` as a mail exchanger meets it: the installed command, settings
from the environment, a real SMTP client, the job it queues run by a real worker."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path

import aiosmtplib
import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
import trustme

from tests.support.commands import inbound
from tests.support.pipeline import add_client, csv_of, launch, run_workers
from tests.support.prometheus import samples
from tests.support.reports import delivery_status
from tests.support.smtp import RecordingHandler
from tests.support.system import free_port
from tests.support.web import cli
from worker import verp
from worker.dev import embedded
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
    metrics_port = free_port()
    async with inbound(settings, {"REDIS_URL": nobody, "METRICS_PORT": str(metrics_port)}) as port:
        code, text = await deliver(port, genuine, b"Subject: x\r\n\r\nx\r\n")
        counted = await scrape(metrics_port)
    assert (code, text.split()[0]) == (451, "4.3.0")
    assert counted['survey_worker_inbound_messages_total{result="deferred"}'] == 1
    assert counted['survey_worker_inbound_messages_total{result="queued"}'] == 0


async def scrape(port: int) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert answer.status_code == 200
    return samples(answer.text)


async def test_inbound_serves_what_it_took_and_refused_on_metrics_port(
    settings: Settings,
) -> None:
    """What ops watch: messages queued, and recipients refused by why (never an address)."""
    key = settings.signing_keys()[0]
    genuine = verp.address(key, 7, BOUNCE_DOMAIN)
    message = b"Subject: hello\r\n\r\nhello\r\n"
    metrics_port = free_port()
    async with inbound(settings, {"METRICS_PORT": str(metrics_port)}) as port:
        before = await scrape(metrics_port)
        forged = [verp.address(b"not-our-key", n, BOUNCE_DOMAIN) for n in (7, 8)]
        replies = [
            (await deliver(port, address, message))[0]
            for address in (genuine, "postmaster@example.com", *forged)
        ]
        after = await scrape(metrics_port)
    counts = {
        'survey_worker_inbound_messages_total{result="queued"}': 1,
        'survey_worker_inbound_messages_total{result="deferred"}': 0,
        'survey_worker_inbound_refused_total{reason="not_bounce_domain"}': 1,
        'survey_worker_inbound_refused_total{reason="unknown_address"}': 2,
    }
    assert replies == [250, 550, 550, 550]
    assert {name: before[name] for name in counts} == dict.fromkeys(counts, 0)
    assert {name: after[name] for name in counts} == counts
    assert "process_resident_memory_bytes" in after


async def test_inbound_whose_metrics_port_is_taken_does_not_start(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104
        taken.listen()
        port = taken.getsockname()[1]
        done = await cli(
            settings,
            "inbound",
            "--port",
            str(free_port()),
            env={"BOUNCE_DOMAIN": BOUNCE_DOMAIN, "METRICS_PORT": str(port)},
        )
    assert done.code == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: METRICS_PORT: cannot listen on 0.0.0.0:{port}: address already in use"
    )


@pytest.mark.parametrize("domain", [None, "not a domain"])
async def test_inbound_without_a_usable_bounce_domain_says_so(
    settings: Settings, domain: str | None
) -> None:
    done = await cli(settings, "inbound", "--port", str(free_port()), env={"BOUNCE_DOMAIN": domain})
    assert done.code != 0
    assert "Traceback" not in done.stderr
    assert "BOUNCE_DOMAIN" in done.stderr


# --- STARTTLS (RFC 3207) ---------------------------------------------------------------------


def tls_files(folder: Path, ca: trustme.CA) -> dict[str, str]:
    """INBOUND_TLS_CERT and INBOUND_TLS_KEY for a certificate of `ca` naming 127.0.0.1."""
    issued = ca.issue_cert("127.0.0.1", "localhost", BOUNCE_DOMAIN)
    cert, key = folder / "inbound-fullchain.pem", folder / "inbound-key.pem"
    for pem in issued.cert_chain_pems:
        pem.write_to_path(str(cert), append=True)
    issued.private_key_pem.write_to_path(str(key))
    return {"INBOUND_TLS_CERT": str(cert), "INBOUND_TLS_KEY": str(key)}


async def test_inbound_offers_starttls_with_its_certificate(
    settings: Settings, tmp_path: Path
) -> None:
    ca = trustme.CA()
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    genuine = verp.address(settings.signing_keys()[0], 7, BOUNCE_DOMAIN)
    message = b"Subject: bounce\r\n\r\nhello\r\n"
    async with inbound(settings, tls_files(tmp_path, ca)) as port:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, tls_context=trusted, start_tls=False, timeout=10
        )
        await client.connect()
        try:
            await client.ehlo()
            assert client.supports_extension("starttls")
            reply = await client.starttls()
            assert reply.code == 220
            # The certificate was verified against the test's CA: TLS is what carries the rest.
            assert client.get_transport_info("peercert") is not None
            await client.ehlo()
            assert not client.supports_extension("starttls")
            errors, answer = await client.sendmail("", [genuine], message)
            assert errors == {} and answer.startswith("2.0.0")
        finally:
            client.close()
    redis = aioredis.from_url(settings.redis_url or "")
    try:
        assert await redis.zcard("arq:queue") == 1
    finally:
        await redis.aclose()


async def test_inbound_without_tls_settings_offers_no_starttls(settings: Settings) -> None:
    async with inbound(settings) as port:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10)
        await client.connect()
        try:
            await client.ehlo()
            assert not client.supports_extension("starttls")
        finally:
            client.close()


async def test_inbound_needs_only_redis(settings: Settings, tmp_path: Path) -> None:
    # No DATABASE_URL: inbound uses no database, so it starts no embedded Postgres either.
    data_dir = tmp_path / "data"
    async with inbound(settings, env={"DATABASE_URL": None, "DATA_DIR": str(data_dir)}) as port:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10)
        await client.connect()
        try:
            await client.ehlo()
        finally:
            client.close()
        assert embedded.EmbeddedPostgres(data_dir).running_port() is None


@pytest.mark.parametrize("problem", ["missing cert", "missing key", "only cert", "mismatch"])
async def test_inbound_with_unusable_tls_files_does_not_start(
    settings: Settings, tmp_path: Path, problem: str
) -> None:
    ca = trustme.CA()
    files = tls_files(tmp_path, ca)
    if problem == "missing cert":
        files["INBOUND_TLS_CERT"] = str(tmp_path / "nope.pem")
        expected = f"Error: INBOUND_TLS_CERT: {tmp_path}/nope.pem is not a file that can be read"
    elif problem == "missing key":
        files["INBOUND_TLS_KEY"] = str(tmp_path)
        expected = f"Error: INBOUND_TLS_KEY: {tmp_path} is not a file that can be read"
    elif problem == "only cert":
        del files["INBOUND_TLS_KEY"]
        expected = "Error: INBOUND_TLS_CERT and INBOUND_TLS_KEY go together: set both or neither"
    else:
        other = trustme.CA().issue_cert("127.0.0.1")
        other.private_key_pem.write_to_path(files["INBOUND_TLS_KEY"])
        expected = (
            "Error: INBOUND_TLS_CERT / INBOUND_TLS_KEY: not a PEM certificate and its private"
            " key (KEY_VALUES_MISMATCH)"
        )
    done = await cli(
        settings,
        "inbound",
        "--port",
        str(free_port()),
        env={"BOUNCE_DOMAIN": BOUNCE_DOMAIN, "INBOUND_TLS_KEY": None, **files},
    )
    assert done.code == 1
    assert done.stderr.strip().splitlines()[-1] == expected
    assert "Traceback" not in done.stderr
