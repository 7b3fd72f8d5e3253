"""Deliver one message to one recipient over a small pool of persistent SMTP connections.

Every outcome other than acceptance is one of the errors in `worker.errors`, chosen by what
is known about the message: `TransientSmtpError` (nothing was delivered, try later),
`PermanentSmtpError` (the server refused for good) or `AmbiguousSmtpError` (the content
went out but no verdict came back, so it may have been delivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Protocol, Self

from aiosmtplib import (
    SMTP,
    SMTPException,
    SMTPRecipientRefused,
    SMTPResponse,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPStatus,
    SMTPTimeoutError,
)

from worker.errors import AmbiguousSmtpError, PermanentSmtpError, SmtpError, TransientSmtpError
from worker.outcomes import classify_reply
from worker.settings import Settings

_REDACTED = "[address]"
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")

# Anything shaped like an e-mail address in a server's reply text, with its brackets.
_ADDRESS_IN_TEXT = re.compile(r"<?[^\s<>()\[\],;:]+@[^\s<>()\[\],;:\"']+>?")


class Mailer(Protocol):
    """What the send path needs from an SMTP client; `SmtpPool` is the real one."""

    async def send(self, *, sender: str, recipient: str, message: bytes) -> int:
        """Deliver `message` to `recipient`; return the 2xx code or raise an `SmtpError`."""
        ...


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how to reach the SMTP server (see `SMTP_*` in `.env.example`)."""

    host: str
    port: int
    tls: Literal["none", "starttls", "tls"]
    timeout: float
    connections: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.connections < 1:
            raise ValueError("an SMTP pool needs at least one connection")

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """The SMTP part of the worker's settings."""
        password = settings.smtp_password
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            tls=settings.smtp_tls,
            timeout=settings.smtp_timeout,
            connections=settings.smtp_connections,
            username=settings.smtp_username,
            password=None if password is None else password.get_secret_value(),
        )


class SmtpPool:
    """At most `config.connections` SMTP sessions, opened on first use and kept open.

    Each `send` borrows an idle session for one transaction (MAIL, RCPT, DATA) and hands it
    back; a session the server refused a message on is reset (RSET) and reused, one that
    failed is closed and reopened by the next `send` that borrows it. TLS follows
    `config.tls` and never falls back to plaintext.
    """

    def __init__(self, config: SmtpConfig) -> None:
        self._config = config
        # Last in, first out: a burst reuses the sessions already open, and a session is
        # opened only when that many sends really run at once.
        self._idle: asyncio.LifoQueue[SMTP] = asyncio.LifoQueue()
        for _ in range(config.connections):
            self._idle.put_nowait(
                SMTP(
                    hostname=config.host,
                    port=config.port,
                    timeout=config.timeout,
                    use_tls=config.tls == "tls",
                    # STARTTLS is negotiated in `_open`, never opportunistically.
                    start_tls=False,
                )
            )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def send(self, *, sender: str, recipient: str, message: bytes) -> int:
        """Deliver `message` (the complete RFC 5322 bytes) from `sender` to `recipient`.

        Returns the server's 2xx reply code. Raises `TransientSmtpError` for a 4xx reply or
        a connection failure or timeout before the content was sent, `PermanentSmtpError`
        for a 5xx reply (or an address the server cannot take, code None), and
        `AmbiguousSmtpError` when the connection is lost while the content is transferred.
        No error message contains the recipient's address.
        """
        smtp = await self._idle.get()
        try:
            if not smtp.is_connected:
                await self._open(smtp)
            await self._envelope(smtp, sender=sender, recipient=recipient, message=message)
            return await self._content(smtp, recipient=recipient, message=message)
        except asyncio.CancelledError:
            # Cancelled in the middle of a command: the session's state is unknown.
            smtp.close()
            raise
        finally:
            self._idle.put_nowait(smtp)

    async def close(self) -> None:
        """Close every session once the sends in flight are done; later sends reopen them."""
        sessions = [await self._idle.get() for _ in range(self._config.connections)]
        try:
            await asyncio.gather(*(_quit(smtp) for smtp in sessions))
        finally:
            for smtp in sessions:
                self._idle.put_nowait(smtp)

    async def _open(self, smtp: SMTP) -> None:
        """Connect, say EHLO, negotiate TLS as configured and log in; failures are transient.

        None of this concerns the recipient, so even a 5xx here (a refused login, say) is
        transient: the message is retried once the operator fixes the server or settings.
        """
        config = self._config
        try:
            await smtp.connect()
            await smtp.ehlo()
            if config.tls == "starttls":
                # RFC 3207: TLS is required, so a server that does not offer STARTTLS (or an
                # attacker who stripped it from the EHLO reply) gets nothing in plaintext;
                # aiosmtplib's starttls() raises SMTPException before sending anything then.
                await smtp.starttls()
                # RFC 3207 §4.2: forget what was learnt before TLS and ask again.
                await smtp.ehlo()
            if config.username is not None:
                await smtp.login(config.username, config.password or "")
        except (SMTPException, OSError) as exc:
            smtp.close()
            raise TransientSmtpError(
                f"no SMTP session with {config.host}:{config.port}: {exc}",
                code=_reply_code(exc),
            ) from exc

    async def _envelope(self, smtp: SMTP, *, sender: str, recipient: str, message: bytes) -> None:
        """Send MAIL and RCPT; on refusal, RSET so the session can carry the next message."""
        options: list[str] = []
        if not (sender.isascii() and recipient.isascii()):
            # RFC 6531: a non-ASCII address may only travel to a server offering SMTPUTF8.
            if not smtp.supports_extension("smtputf8"):
                raise PermanentSmtpError(
                    "the address is not ASCII and the server does not support SMTPUTF8"
                )
            options.append("SMTPUTF8")
        if not message.isascii() and smtp.supports_extension("8bitmime"):
            # RFC 6152: declare 8-bit content to a server that accepts it.
            options.append("BODY=8BITMIME")
        encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
        command = "MAIL FROM"
        extensions = [option.encode() for option in options]
        try:
            # The addresses are bare, validated addr-specs (addresses.normalise): send them
            # as they are rather than through smtp.mail()/rcpt(), whose address parsing
            # costs more than the rest of the command.
            reply = await smtp.execute_command(
                b"MAIL", b"FROM:<" + sender.encode(encoding) + b">", *extensions
            )
            if reply.code != SMTPStatus.completed:
                raise SMTPSenderRefused(reply.code, reply.message, sender)
            command = "RCPT TO"
            reply = await smtp.execute_command(b"RCPT", b"TO:<" + recipient.encode(encoding) + b">")
            if reply.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
                raise SMTPRecipientRefused(reply.code, reply.message, recipient)
        except SMTPResponseException as exc:
            # Not chained: aiosmtplib's error holds the recipient's clear address.
            raise await _refusal(
                smtp, exc, command=command, recipient=recipient, otherwise=TransientSmtpError
            ) from None
        except (SMTPServerDisconnected, SMTPTimeoutError) as exc:
            smtp.close()
            raise TransientSmtpError(f"{command}: {exc}") from exc
        except ValueError:
            # aiosmtplib refuses an address that could inject into the command line; its
            # message quotes the address, hence no chaining.
            await _reset(smtp)
            raise PermanentSmtpError(f"{command}: the address cannot be sent over SMTP") from None

    async def _content(self, smtp: SMTP, *, recipient: str, message: bytes) -> int:
        """Send DATA and the content; return the 2xx code of the server's final reply.

        Written on aiosmtplib's protocol (`write`, then `read_response` before any other
        await) rather than `SMTP.data()`, for two reasons: a failure before the 354 reply
        is known to have sent nothing (transient, not ambiguous), and the content, which
        `message.build` already made CRLF-only, is dot-stuffed without a regex pass.
        """
        await self._step(
            smtp,
            b"DATA\r\n",
            expect=SMTPStatus.start_input,
            recipient=recipient,
            failure=TransientSmtpError,
        )
        # From here on the content has left: if the reply is lost, the server may have
        # accepted the message.
        reply = await self._step(
            smtp,
            dot_stuffed(message),
            expect=SMTPStatus.completed,
            recipient=recipient,
            failure=AmbiguousSmtpError,
        )
        return reply.code

    async def _step(
        self,
        smtp: SMTP,
        data: bytes,
        *,
        expect: int,
        recipient: str,
        failure: type[SmtpError],
    ) -> SMTPResponse:
        """Write one DATA step and read its reply; anything but `expect` raises.

        A lost connection or a timeout raises `failure`; a refusal raises what `_refusal`
        decides, with `failure` for replies that are no refusal.
        """
        protocol = smtp.protocol
        try:
            if protocol is None:
                raise SMTPServerDisconnected("not connected")
            protocol.write(data)
            reply = await protocol.read_response(timeout=self._config.timeout)
        except (SMTPServerDisconnected, SMTPTimeoutError) as exc:
            smtp.close()
            raise failure(f"DATA: {exc}") from exc
        if reply.code != expect:
            raise await _refusal(
                smtp,
                SMTPResponseException(reply.code, reply.message),
                command="DATA",
                recipient=recipient,
                otherwise=failure,
            ) from None
        return reply


def dot_stuffed(message: bytes) -> bytes:
    """The content as sent after DATA: CRLF lines, leading dots doubled, ending in CRLF.CRLF.

    RFC 5321 section 4.5.2 (transparency) and section 2.3.8 (lines end in CRLF only).
    """
    crlf = message.count(b"\r\n")
    if message.count(b"\r") != crlf or message.count(b"\n") != crlf:
        message = _LINE_BREAK.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


async def _refusal(
    smtp: SMTP,
    exc: SMTPResponseException,
    *,
    command: str,
    recipient: str,
    otherwise: type[SmtpError],
) -> SmtpError:
    """The error for a reply that refused `command`, leaving `smtp` ready for the next message.

    A 5xx is permanent and a 4xx transient; after either the session is reset and reused.
    Any other code is not a refusal a server may send there: the session is out of step and
    closed, and the error is `otherwise` (transient before the content, ambiguous after).
    """
    text = f"{command} refused: {exc.code} {_redact(exc.message, recipient)}"
    match classify_reply(exc.code):
        case "failed":
            await _reset(smtp)
            return PermanentSmtpError(text, code=exc.code)
        case "deferred":
            await _reset(smtp)
            return TransientSmtpError(text, code=exc.code)
        case _:
            smtp.close()
            return otherwise(f"unexpected reply: {text}")


async def _reset(smtp: SMTP) -> None:
    """RSET after a refusal (RFC 5321 §4.1.1.5); drop the session if even that fails."""
    try:
        await smtp.rset()
    except SMTPException:
        smtp.close()


async def _quit(smtp: SMTP) -> None:
    """Say goodbye (RFC 5321 §4.1.1.10) if the server is still there, and close."""
    if smtp.is_connected:
        with contextlib.suppress(SMTPException):
            await smtp.quit()
    smtp.close()


def _reply_code(exc: BaseException) -> int | None:
    """The server's reply code carried by an aiosmtplib error, if it carries a real one."""
    if isinstance(exc, SMTPResponseException) and exc.code > 0:
        return exc.code
    return None


def _redact(text: str, address: str) -> str:
    """The server's reply text on one line, without the recipient's or any other address."""
    text = re.sub(rf"<?{re.escape(address)}>?", _REDACTED, text, flags=re.IGNORECASE)
    return " ".join(_ADDRESS_IN_TEXT.sub(_REDACTED, text).split())
