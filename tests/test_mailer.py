"""The SMTP pool against a real aiosmtpd server: delivery, reuse and outcome classification."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from tests.support.smtp import RecordedMessage, RecordingHandler, start_smtp_server
from tests.support.system import free_port
from worker.errors import (
    AmbiguousSmtpError,
    NotStarted,
    PermanentSmtpError,
    RelayTrouble,
    TransientSmtpError,
)
from worker.mailer import SmtpPool
from worker.outcomes import is_hard_bounce
from worker.relay_config import Relay
from worker.smtp_session import ContentGate

SENDER = "surveys@client.example"
ALICE = "alice@example.com"
BOB = "bob@example.com"
MESSAGE = (
    b"From: Client Surveys <surveys@client.example>\r\n"
    b"To: <alice@example.com>\r\n"
    b"Subject: Your opinion\r\n"
    b"Message-ID: <1@client.example>\r\n"
    b"\r\n"
    b"Hello,\r\n"
    b".a line that starts with a dot\r\n"
    b"\r\n"
)


def config(port: int, **overrides: Any) -> Relay:
    values: dict[str, Any] = {
        "name": "main",
        "host": "127.0.0.1",
        "port": port,
        "tls": "none",
        "timeout": 5.0,
        "connections": 2,
    }
    return Relay(**(values | overrides))


@pytest.fixture(params=[True, False], ids=["pipelining", "lock-step"])
def handler(request: pytest.FixtureRequest) -> RecordingHandler:
    """A server offering PIPELINING (as Postfix does), and one that does not."""
    return RecordingHandler(pipelining=request.param)


@pytest.fixture
async def port(handler: RecordingHandler) -> AsyncIterator[int]:
    async with start_smtp_server(handler) as port:
        yield port


@pytest.fixture
async def pool(port: int) -> AsyncIterator[SmtpPool]:
    async with SmtpPool(config(port)) as pool:
        yield pool


async def test_an_accepted_message_arrives_byte_identical(
    pool: SmtpPool, handler: RecordingHandler
) -> None:
    assert await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE) == 250
    assert handler.messages == [RecordedMessage(SENDER, (ALICE,), MESSAGE, ())]


async def test_a_message_the_journal_does_not_start_never_leaves(
    pool: SmtpPool, handler: RecordingHandler
) -> None:
    asked: list[str] = []

    def refuse(write_content: Callable[[], None], give_up: Callable[[], None]) -> None:
        asked.append("refused")
        give_up()

    def allow(write_content: Callable[[], None], give_up: Callable[[], None]) -> None:
        asked.append("allowed")
        write_content()

    with pytest.raises(NotStarted):
        await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE, before_content=refuse)
    # Nothing arrived, not even a partial message; the pool carries on.
    assert handler.messages == [] and handler.dropped == []
    assert await pool.send(sender=SENDER, recipient=BOB, message=MESSAGE, before_content=allow)
    assert [m.recipients for m in handler.messages] == [(BOB,)]
    assert asked == ["refused", "allowed"]


async def test_mail_rcpt_and_data_go_in_one_write_only_when_the_server_offers_pipelining(
    pool: SmtpPool, handler: RecordingHandler
) -> None:
    for _ in range(3):
        await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE)
    assert len(handler.messages) == 3
    assert handler.pipelined == (3 if handler.pipelining else 0)


async def test_the_next_envelope_leaves_with_the_content_before_it_when_pipelining(
    port: int, handler: RecordingHandler
) -> None:
    # One round trip per message: MAIL, RCPT and DATA of the next message go in the same
    # write as the content before them (RFC 2920 section 3.1).
    async with SmtpPool(config(port, connections=1)) as pool:
        sends = [pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE) for _ in range(6)]
        assert await asyncio.gather(*sends) == [250] * 6
    assert [m.data for m in handler.messages] == [MESSAGE] * 6
    assert handler.followed == (5 if handler.pipelining else 0)
    assert handler.connections == 1


async def _one_session_sends(
    port: int, *sends: tuple[str, ContentGate | None]
) -> list[int | BaseException]:
    """Send to each recipient in turn on one session, all at once; each result or error."""
    async with SmtpPool(config(port, connections=1)) as pool:
        return await asyncio.gather(
            *(
                pool.send(sender=SENDER, recipient=r, message=MESSAGE, before_content=gate)
                for r, gate in sends
            ),
            return_exceptions=True,
        )


async def test_a_refused_content_leaves_the_message_behind_it_alone(
    port: int, handler: RecordingHandler
) -> None:
    # No RSET after the content's reply: the transaction is over (RFC 5321 section
    # 4.1.1.4), and a reset would undo the next one, whose envelope has left.
    handler.on(BOB, stage="DATA", reply="554 5.7.1 Message rejected as spam")
    bob, alice = await _one_session_sends(port, (BOB, None), (ALICE, None))
    assert isinstance(bob, PermanentSmtpError) and bob.code == 554
    assert alice == 250
    assert [m.recipients for m in handler.messages] == [(ALICE,)]
    assert handler.connections == 1


async def test_a_refused_recipient_lets_the_message_held_behind_it_go_after_the_reset(
    port: int, handler: RecordingHandler
) -> None:
    handler.on(BOB, reply="550 5.1.1 User unknown")
    bob, alice, carol = await _one_session_sends(
        port, (BOB, None), (ALICE, None), ("carol@example.com", None)
    )
    assert isinstance(bob, PermanentSmtpError) and bob.code == 550
    assert (alice, carol) == (250, 250)
    assert [m.recipients for m in handler.messages] == [(ALICE,), ("carol@example.com",)]
    assert handler.connections == 1


async def test_a_drop_after_a_content_fails_the_message_whose_envelope_followed_it(
    port: int, handler: RecordingHandler
) -> None:
    handler.on(BOB, stage="DATA", drop=True, times=1)
    bob, alice = await _one_session_sends(port, (BOB, None), (ALICE, None))
    assert isinstance(bob, AmbiguousSmtpError)
    if handler.pipelining:
        # Alice's envelope had left with Bob's content: transient, nothing of her message.
        assert isinstance(alice, TransientSmtpError)
        assert handler.messages == []
    else:
        # Nothing of hers had left: she goes on the session opened again.
        assert alice == 250
        assert [m.recipients for m in handler.messages] == [(ALICE,)]


async def test_a_message_held_behind_one_the_journal_stops_goes_on_a_new_session(
    port: int, handler: RecordingHandler
) -> None:
    def refuse(write_content: Callable[[], None], give_up: Callable[[], None]) -> None:
        give_up()

    bob, alice = await _one_session_sends(port, (BOB, refuse), (ALICE, None))
    assert isinstance(bob, NotStarted)
    assert alice == 250
    assert [m.recipients for m in handler.messages] == [(ALICE,)]
    assert handler.dropped == []
    assert handler.connections == 2


async def test_sequential_sends_share_one_connection(
    pool: SmtpPool, handler: RecordingHandler
) -> None:
    for _ in range(5):
        await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE)
    assert len(handler.messages) == 5
    assert handler.connections == 1


async def test_concurrent_sends_use_at_most_the_configured_connections(
    port: int, handler: RecordingHandler
) -> None:
    async with SmtpPool(config(port, connections=3)) as pool:
        sends = [pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE) for _ in range(12)]
        assert await asyncio.gather(*sends) == [250] * 12
    assert len(handler.messages) == 12
    assert 1 < handler.connections <= 3


async def test_a_4xx_is_transient_and_the_connection_stays_usable(
    pool: SmtpPool, handler: RecordingHandler
) -> None:
    handler.on(ALICE, reply="451 4.3.0 Try again later", times=1)
    with pytest.raises(TransientSmtpError) as caught:
        await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE)
    assert caught.value.code == 451
    assert await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE) == 250
    assert [m.recipients for m in handler.messages] == [(ALICE,)]
    assert handler.connections == 1


async def test_a_refused_sender_leaves_the_connection_usable(
    pool: SmtpPool, handler: RecordingHandler
) -> None:
    handler.on(SENDER, stage="MAIL", reply="451 4.7.1 Sender greylisted", times=1)
    with pytest.raises(TransientSmtpError) as caught:
        await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE)
    assert caught.value.code == 451
    assert await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE) == 250
    assert handler.connections == 1


async def test_an_unknown_user_is_a_permanent_hard_bounce_without_the_address(
    pool: SmtpPool, handler: RecordingHandler
) -> None:
    handler.on(BOB, reply=f"550 5.1.1 <{BOB.upper()}>: Recipient address rejected: User unknown")
    with pytest.raises(PermanentSmtpError) as caught:
        await pool.send(sender=SENDER, recipient=BOB, message=MESSAGE)
    error = caught.value
    assert error.code == 550
    assert is_hard_bounce(550, str(error))
    assert "User unknown" in str(error)
    assert "bob" not in str(error).lower()
    assert error.__cause__ is None
    assert await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE) == 250
    assert [m.recipients for m in handler.messages] == [(ALICE,)]
    assert handler.connections == 1


async def test_a_5xx_after_the_content_is_permanent(
    pool: SmtpPool, handler: RecordingHandler
) -> None:
    handler.on(ALICE, stage="DATA", reply="554 5.7.1 Message rejected as spam", times=1)
    with pytest.raises(PermanentSmtpError) as caught:
        await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE)
    assert caught.value.code == 554
    assert not is_hard_bounce(554, str(caught.value))
    assert await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE) == 250
    assert handler.connections == 1


async def test_a_server_that_is_down_is_the_relays_trouble_not_the_recipients() -> None:
    async with SmtpPool(config(free_port())) as pool:
        with pytest.raises(RelayTrouble) as caught:
            await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE)
    trouble = caught.value
    assert (trouble.relay, trouble.reason, trouble.code) == ("main", "unreachable", None)
    assert trouble.error is not None and "Connect" in trouble.error


async def test_a_421_at_any_step_is_the_relay_throttling(
    pool: SmtpPool, handler: RecordingHandler
) -> None:
    handler.on(ALICE, reply="421 4.7.0 Too many connections, slow down", times=1)
    with pytest.raises(RelayTrouble) as caught:
        await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE)
    trouble = caught.value
    assert (trouble.reason, trouble.code, trouble.status) == ("throttled", 421, "4.7.0")
    assert trouble.reply is not None and "slow down" in trouble.reply


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("530 5.7.0 Authentication required", "auth_failed"),
        ("550 5.7.1 Sender not allowed to relay", "refused"),
    ],
)
async def test_a_refused_sender_is_the_relays_trouble(
    pool: SmtpPool, handler: RecordingHandler, reply: str, reason: str
) -> None:
    handler.on(SENDER, stage="MAIL", reply=reply, times=1)
    with pytest.raises(RelayTrouble) as caught:
        await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE)
    assert (caught.value.reason, caught.value.code) == (reason, int(reply[:3]))
    assert handler.messages == []


async def test_a_drop_after_the_content_is_ambiguous(
    pool: SmtpPool, handler: RecordingHandler
) -> None:
    handler.on(ALICE, stage="DATA", drop=True, times=1)
    with pytest.raises(AmbiguousSmtpError):
        await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE)
    assert [m.data for m in handler.dropped] == [MESSAGE]
    assert await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE) == 250
    assert handler.connections == 2


async def test_a_timeout_after_the_content_is_ambiguous(
    port: int, handler: RecordingHandler
) -> None:
    handler.on(ALICE, stage="DATA", delay=2, times=1)
    async with SmtpPool(config(port, timeout=0.2)) as pool:
        with pytest.raises(AmbiguousSmtpError, match="no reply in time"):
            await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE)


async def test_a_drop_before_the_content_is_transient(
    pool: SmtpPool, handler: RecordingHandler
) -> None:
    handler.on(ALICE, drop=True, times=1)
    with pytest.raises(TransientSmtpError) as caught:
        await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE)
    assert caught.value.code is None
    assert await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE) == 250
    assert handler.connections == 2


async def test_a_timeout_before_the_content_is_transient(
    port: int, handler: RecordingHandler
) -> None:
    handler.on(ALICE, delay=2, times=1)
    async with SmtpPool(config(port, timeout=0.2)) as pool:
        with pytest.raises(TransientSmtpError, match="no reply in time"):
            await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE)
    assert handler.messages == []


async def test_an_idle_session_outlives_the_reply_timeout(
    port: int, handler: RecordingHandler
) -> None:
    # The timeout is for a reply awaited, not for a session waiting for the next message.
    async with SmtpPool(config(port, timeout=0.2)) as pool:
        assert await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE) == 250
        await asyncio.sleep(0.7)
        assert await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE) == 250
    assert handler.connections == 1


async def test_required_starttls_never_falls_back_to_plaintext(
    port: int, handler: RecordingHandler
) -> None:
    async with SmtpPool(config(port, tls="starttls")) as pool:
        with pytest.raises(RelayTrouble) as caught:
            await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE)
    assert caught.value.reason == "tls_failed"
    assert caught.value.error is not None and "STARTTLS" in caught.value.error
    assert handler.messages == []
    assert handler.connections == 1


async def test_delivers_over_starttls_to_a_server_it_trusts(
    handler: RecordingHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    with ca.cert_pem.tempfile() as ca_file:
        # OpenSSL's default trust store, which the pool uses, honours SSL_CERT_FILE.
        monkeypatch.setenv("SSL_CERT_FILE", ca_file)
        async with (
            start_smtp_server(handler, tls_context=server_tls, require_starttls=True) as port,
            SmtpPool(config(port, tls="starttls", connections=1)) as pool,
        ):
            for recipient in (ALICE, BOB):
                assert await pool.send(sender=SENDER, recipient=recipient, message=MESSAGE) == 250
    assert [m.recipients for m in handler.messages] == [(ALICE,), (BOB,)]
    assert [m.data for m in handler.messages] == [MESSAGE, MESSAGE]
    # One connection for both: aiosmtpd starts a second session on it after STARTTLS.
    assert handler.connections == 2


async def test_reconnects_after_the_server_closed_an_idle_connection() -> None:
    handler = RecordingHandler()
    async with (
        start_smtp_server(handler, timeout=0.1) as port,
        SmtpPool(config(port, connections=1)) as pool,
    ):
        await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE)
        await asyncio.sleep(0.3)
        await pool.send(sender=SENDER, recipient=BOB, message=MESSAGE)
    assert [m.recipients for m in handler.messages] == [(ALICE,), (BOB,)]
    assert handler.connections == 2


async def test_a_non_ascii_recipient_needs_smtputf8(
    pool: SmtpPool, handler: RecordingHandler
) -> None:
    with pytest.raises(PermanentSmtpError, match="SMTPUTF8") as caught:
        await pool.send(sender=SENDER, recipient="zoë@example.com", message=MESSAGE)
    assert caught.value.code is None
    assert handler.messages == []
    assert await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE) == 250


async def test_a_non_ascii_recipient_goes_to_a_server_with_smtputf8() -> None:
    handler = RecordingHandler()
    async with (
        start_smtp_server(handler, enable_SMTPUTF8=True) as port,
        SmtpPool(config(port)) as pool,
    ):
        await pool.send(sender=SENDER, recipient="zoë@example.com", message=MESSAGE)
    [received] = handler.messages
    assert received.recipients == ("zoë@example.com",)
    assert "SMTPUTF8" in received.mail_options


async def test_logs_in_when_a_username_is_configured() -> None:
    logins: list[LoginPassword] = []

    def authenticator(
        server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        logins.append(data)
        return AuthResult(success=True)

    handler = RecordingHandler()
    async with (
        start_smtp_server(handler, authenticator=authenticator, auth_require_tls=False) as port,
        SmtpPool(config(port, username="worker", password="s3cret")) as pool,
    ):
        await pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE)
    assert logins == [LoginPassword(b"worker", b"s3cret")]
    assert len(handler.messages) == 1


async def test_close_waits_for_sends_in_flight(port: int, handler: RecordingHandler) -> None:
    handler.on(ALICE, stage="DATA", delay=0.2, times=1)
    pool = SmtpPool(config(port))
    send = asyncio.create_task(pool.send(sender=SENDER, recipient=ALICE, message=MESSAGE))
    await asyncio.sleep(0.05)
    await pool.close()
    assert send.done()
    assert send.result() == 250
