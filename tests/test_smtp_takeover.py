"""The contract `smtp_session.Session.take_over` relies on in aiosmtplib (pinned below 6):
after connect, EHLO and STARTTLS, `SMTP.transport` is the live transport of the session
and `supports_extension` reports what the last EHLO offered; once our protocol is set on
that transport, every reply reaches it and none is left to aiosmtplib."""

from __future__ import annotations

import asyncio
import ssl

import pytest
import trustme
from aiosmtplib import SMTP

from tests.support.smtp import RecordingHandler, start_smtp_server
from worker.smtp_session import Session, _Replies

MESSAGE = b"Subject: contract\r\n\r\nHello\r\n"


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
async def test_a_session_opened_by_aiosmtplib_carries_on_without_it(tls: bool) -> None:
    handler = RecordingHandler(pipelining=True)
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    authority.configure_trust(client_tls)
    options = {"tls_context": server_tls, "require_starttls": True} if tls else {}
    async with start_smtp_server(handler, **options) as port:
        smtp = SMTP(
            hostname="127.0.0.1", port=port, start_tls=False, tls_context=client_tls, timeout=5
        )
        await smtp.connect()
        await smtp.ehlo()
        if tls:
            await smtp.starttls()
            await smtp.ehlo()
        assert isinstance(smtp.transport, asyncio.WriteTransport)
        assert (smtp.transport.get_extra_info("ssl_object") is not None) == tls
        assert smtp.supports_extension("pipelining")
        session = Session.take_over(smtp, timeout=5)
        assert isinstance(smtp.transport.get_protocol(), _Replies)
        assert session.usable
        code = await session.deliver(
            sender="s@client.example", recipient="a@example.com", message=MESSAGE
        )
        assert code == 250
        await session.quit()
    assert [m.recipients for m in handler.messages] == [("a@example.com",)]
    assert handler.pipelined == 1
