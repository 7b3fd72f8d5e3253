"""A real SMTP server for tests: aiosmtpd on port 0, in the test's own event loop.

`RecordingHandler` records every message it accepts and can be told, per address, to
refuse, to delay or to drop the connection at MAIL, RCPT or DATA; `start_smtp_server` runs
aiosmtpd's `SMTP` protocol with `loop.create_server` and yields the bound port.

    handler = RecordingHandler()
    handler.on("gone@example.com", reply="550 5.1.1 No such user")
    handler.on("busy@example.com", reply="451 4.3.0 Try later", times=1)
    handler.on("flaky@example.com", stage="DATA", drop=True)
    async with start_smtp_server(handler) as port:
        ...
    assert handler.messages[0].data == message
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, Envelope, Session

Stage = Literal["MAIL", "RCPT", "DATA"]


@dataclass(frozen=True)
class RecordedMessage:
    """One message as the server received it: envelope and the exact content bytes."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...]


@dataclass
class _Rule:
    reply: str | None
    drop: bool
    delay: float
    until: asyncio.Event | None
    times: int | None


class RecordingHandler:
    """An aiosmtpd handler that accepts everything unless a rule for the address says not.

    `messages` holds the accepted messages in order, `dropped` those whose content arrived
    before a `drop` rule cut the connection (the client cannot know they arrived), and
    `connections` counts the SMTP sessions clients opened (one per EHLO/HELO'd connection).

    With `pipelining` the EHLO reply offers PIPELINING (RFC 2920), as Postfix does;
    `pipelined` counts the transactions whose DATA command had already arrived when the
    RCPT command was handled, which only a pipelining client does; `followed` those whose
    content arrived with the next transaction's MAIL command right behind it.
    """

    def __init__(self, *, pipelining: bool = True) -> None:
        self.pipelining = pipelining
        self.pipelined = 0
        self.followed = 0
        self.messages: list[RecordedMessage] = []
        self.dropped: list[RecordedMessage] = []
        self._rules: dict[tuple[Stage, str], list[_Rule]] = {}
        self._sessions: list[Session] = []
        # Seconds every message waits before its DATA reply: a slow server.
        self.data_delay = 0.0
        # When each accepted message arrived (time.time()), in the order of `messages`.
        self.arrivals: list[float] = []
        # (stage, address) of each command a `delay` or `until` rule is holding right now.
        self.held: list[tuple[Stage, str]] = []

    @property
    def connections(self) -> int:
        return len(self._sessions)

    def on(
        self,
        *addresses: str,
        stage: Stage = "RCPT",
        reply: str | None = None,
        drop: bool = False,
        delay: float = 0.0,
        until: asyncio.Event | None = None,
        times: int | None = None,
    ) -> None:
        """Add a rule for `addresses` (the sender at MAIL, a recipient at RCPT and DATA).

        At `stage`, wait `delay` seconds or until the test sets `until`, then close the
        connection without a reply if `drop`, else answer `reply` (a full reply line such
        as "451 4.3.0 Try later") if given, else carry on as usual. The rule applies
        `times` times (None: always), in all to the addresses given together; rules for
        the same address and stage apply in the order they were added.
        """
        rule = _Rule(reply=reply, drop=drop, delay=delay, until=until, times=times)
        for address in addresses:
            self._rules.setdefault((stage, address.lower()), []).append(rule)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        self._greeted(session, hostname)
        if self.pipelining:
            # The last line is the one without a hyphen; extensions go before it.
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        self._greeted(session, hostname)
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        status = await self._apply("MAIL", address, server, envelope)
        if status is not None:
            return status
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        # What the client sent and aiosmtpd has not read yet (asyncio's StreamReader keeps
        # it in `_buffer`).
        if b"DATA" in server._reader._buffer:
            self.pipelined += 1
        status = await self._apply("RCPT", address, server, envelope)
        if status is not None:
            return status
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if server._reader._buffer.startswith(b"MAIL FROM:"):
            self.followed += 1
        for recipient in envelope.rcpt_tos:
            status = await self._apply("DATA", recipient, server, envelope)
            if status is not None:
                return status
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        self.messages.append(_record(envelope))
        self.arrivals.append(time.time())
        return "250 OK"

    def _greeted(self, session: Session, hostname: str) -> None:
        # With a handle_EHLO/handle_HELO hook, aiosmtpd leaves this to the handler.
        session.host_name = hostname
        if not any(known is session for known in self._sessions):
            self._sessions.append(session)

    async def _apply(
        self, stage: Stage, address: str, server: SMTP, envelope: Envelope
    ) -> str | None:
        rules = self._rules.get((stage, address.lower()), [])
        # A rule shared with other addresses may have been used up through them.
        while rules and rules[0].times == 0:
            rules.pop(0)
        if not rules:
            return None
        rule = rules[0]
        if rule.times is not None:
            rule.times -= 1
        if rule.delay or rule.until:
            self.held.append((stage, address))
            try:
                if rule.until:
                    await rule.until.wait()
                else:
                    await asyncio.sleep(rule.delay)
            finally:
                self.held.remove((stage, address))
        if rule.drop:
            if stage == "DATA":
                self.dropped.append(_record(envelope))
            assert server.transport is not None
            server.transport.close()
            # connection_lost() cancels this handler; never answer.
            await asyncio.Event().wait()
        return rule.reply


def _record(envelope: Envelope) -> RecordedMessage:
    assert envelope.mail_from is not None
    assert envelope.original_content is not None
    return RecordedMessage(
        sender=envelope.mail_from,
        recipients=tuple(envelope.rcpt_tos),
        data=envelope.original_content,
        mail_options=tuple(envelope.mail_options),
    )


class _Session(SMTP):
    """aiosmtpd's protocol for one connection, which tells when the connection is gone."""

    def __init__(self, handler: object, **options: Any) -> None:
        super().__init__(handler, **options)
        self.gone = asyncio.Event()

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self.gone.set()


@asynccontextmanager
async def start_smtp_server(
    handler: object, *, hostname: str = "127.0.0.1", port: int = 0, **options: Any
) -> AsyncIterator[int]:
    """Serve SMTP with `handler` on `hostname`, in the running event loop; yield the port.

    `options` go to aiosmtpd's `SMTP` (e.g. `enable_SMTPUTF8=True`, `timeout=0.2` to close
    idle connections, `authenticator=...`). On exit the server stops and every connection
    still open is closed from the server side.
    """
    loop = asyncio.get_running_loop()
    sessions: list[_Session] = []

    def session() -> _Session:
        smtp = _Session(handler, hostname="smtp.test", loop=loop, **options)
        sessions.append(smtp)
        return smtp

    server = await loop.create_server(session, host=hostname, port=port)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        open_sessions = [smtp for smtp in sessions if smtp.transport is not None]
        for smtp in open_sessions:
            assert smtp.transport is not None
            smtp.transport.close()
        await server.wait_closed()
        await asyncio.gather(*(smtp.gone.wait() for smtp in open_sessions))
