"""One open SMTP session carrying mail transactions, pipelined when the server offers it.

aiosmtplib opens the session (connect, EHLO, STARTTLS, AUTH); `Session.take_over` then
reads the server's replies itself, because aiosmtplib's protocol expects exactly one reply
per write and loses the replies to pipelined commands. With PIPELINING (RFC 2920) MAIL,
RCPT and DATA go in one write, and the next message's go in the same write as the content
before it (RFC 2920 section 3.1 lets the content start a group of commands): a message
costs one round trip, one write and one read instead of four, two and two.

Every failure is one of the errors in `worker.errors`, chosen by what is known about the
message: `TransientSmtpError` before the content has left, `AmbiguousSmtpError` once it
has and no verdict came back, `PermanentSmtpError` for a 5xx refusal. No error message
holds the recipient's address.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import NamedTuple, cast

from aiosmtplib import SMTP

from worker.errors import (
    AmbiguousSmtpError,
    NotStarted,
    PermanentSmtpError,
    SmtpError,
    TransientSmtpError,
)
from worker.outcomes import classify_reply

# Gets the function that writes a message's content once the server invites it, and the
# one that gives the message up; calls one of them, at once or later in the same turn of
# the event loop (the send journal, worker/journal.py).
ContentGate = Callable[[Callable[[], None], Callable[[], None]], None]

# RFC 5321 section 4.5.3.1.5: a reply line is at most 512 octets; allow servers some slack,
# but never let one that sends no line ending fill the memory.
MAX_REPLY = 64 * 1024
QUIT_TIMEOUT = 2.0

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REDACTED = "[address]"
# The envelope's commands and the replies that let the transaction go on.
_ENVELOPE = (("MAIL FROM", (250,)), ("RCPT TO", (250, 251)), ("DATA", (354,)))
# Anything shaped like an e-mail address in a server's reply text, with its brackets.
_ADDRESS_IN_TEXT = re.compile(r"<?[^\s<>()\[\],;:]+@[^\s<>()\[\],;:\"']+>?")


class Unsent(TransientSmtpError):
    """The session ended before any of this message was written (it waited behind a
    transaction that broke the session): it may go on another session at once."""


class Reply(NamedTuple):
    """One server reply: its code and its text, the lines of a multiline reply joined."""

    code: int
    text: str


class _SessionLost(Exception):
    """The session cannot go on: the connection is gone, a reply is late or malformed."""


class _Replies(asyncio.Protocol):
    """Collects the replies the server sends on a transport, in order.

    A reply awaited for `timeout` seconds loses the session ("no reply in time"). One timer
    per session watches that, instead of a timeout around every read: a message would pay
    for two (about 5 µs each) where the timer fires about once per `timeout`.
    """

    def __init__(self, timeout: float) -> None:
        self._buffer = bytearray()
        self._replies: deque[Reply] = deque()
        self._lines: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._timeout = timeout
        # When the read waiting now began (the event loop's clock).
        self._waiting_since: float | None = None
        self.lost: str | None = None
        loop = asyncio.get_running_loop()
        loop.call_at(loop.time() + timeout, self._watch)

    @property
    def pending(self) -> int:
        """Replies received and not read yet."""
        return len(self._replies)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        start = 0
        while (end := self._buffer.find(b"\n", start)) != -1:
            line = bytes(self._buffer[start : end + 1]).rstrip(b"\r\n")
            start = end + 1
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                self._lose("malformed reply")
                return
            self._lines.append(line)
            if line[3:4] != b"-":
                text = "\n".join(li[4:].strip().decode("utf-8", "replace") for li in self._lines)
                self._replies.append(Reply(int(line[:3]), text))
                self._lines = []
        del self._buffer[:start]
        if len(self._buffer) + sum(map(len, self._lines)) > MAX_REPLY:
            self._lose("reply too long")
        elif self._replies:
            self._wake()

    def eof_received(self) -> bool:
        self._lose("connection closed by the server")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(f"connection lost: {exc}" if exc else "connection closed")

    async def next(self) -> Reply:
        """The next reply; `_SessionLost` when none can come, or none came in time."""
        while not self._replies:
            if self.lost is not None:
                raise _SessionLost(self.lost)
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            self._waiting_since = loop.time()
            try:
                await self._waiter
            finally:
                self._waiter = self._waiting_since = None
        return self._replies.popleft()

    def _watch(self) -> None:
        """Lose the session if the read waiting now has waited `timeout`; else look again
        when it would have, or `timeout` from now if nothing waits."""
        if self.lost is not None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        since = self._waiting_since
        if since is not None and now - since >= self._timeout:
            self._lose("no reply in time")
            return
        loop.call_at((now if since is None else since) + self._timeout, self._watch)

    def _lose(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Session:
    """An SMTP session; `deliver` sends one message on it, and several may run at once.

    Transactions keep the order of their `deliver` calls. Each reads its replies after the
    one before it has read all of its own. With PIPELINING, a transaction's envelope leaves
    as soon as the one before it has sent its content (held until then, and sent with that
    content); without, once the one before it is over.
    """

    def __init__(
        self, transport: asyncio.WriteTransport, *, timeout: float, extensions: set[str]
    ) -> None:
        self._transport = transport
        self._replies = _Replies(timeout)
        transport.set_protocol(self._replies)
        self._pipelining = "pipelining" in extensions
        self._smtputf8 = "smtputf8" in extensions
        self._8bitmime = "8bitmime" in extensions
        # Done once the last transaction begun has read all of its replies.
        self._last: asyncio.Future[None] | None = None
        # The last envelope sent belongs to a transaction that has not sent its content: the
        # envelopes of the transactions behind it wait in `_held`.
        self._holding = False
        self._held: list[_Envelope] = []

    @classmethod
    def take_over(cls, smtp: SMTP, *, timeout: float) -> Session:
        """Carry on the session `smtp` has opened (greeted, secured, logged in) without it."""
        if smtp.transport is None:
            raise TransientSmtpError("the SMTP session closed while it was being opened")
        offered = {e for e in ("pipelining", "smtputf8", "8bitmime") if smtp.supports_extension(e)}
        transport = cast(asyncio.WriteTransport, smtp.transport)
        return cls(transport, timeout=timeout, extensions=offered)

    @property
    def usable(self) -> bool:
        """Open, and when idle, with no reply the server sent unasked (such as a 421 before
        closing)."""
        busy = self._last is not None and not self._last.done()
        return (
            self._replies.lost is None
            and (busy or self._replies.pending == 0)
            and not self._transport.is_closing()
        )

    def close(self) -> None:
        """Drop the connection without a goodbye."""
        self._transport.close()

    async def quit(self) -> None:
        """Say goodbye (RFC 5321 section 4.1.1.10) if the server is still there, and close."""
        try:
            if self._last is not None:
                await self._last
            if self.usable:
                self._write(b"QUIT\r\n")
                async with asyncio.timeout(QUIT_TIMEOUT):
                    await self._replies.next()
        except (_SessionLost, TimeoutError):
            pass
        finally:
            self.close()

    async def deliver(
        self,
        *,
        sender: str,
        recipient: str,
        message: bytes,
        before_content: ContentGate | None = None,
    ) -> int:
        """Send `message` from `sender` to `recipient`; return the 2xx code of the final reply.

        Raises `TransientSmtpError`, `PermanentSmtpError` or `AmbiguousSmtpError` as the
        module describes. After a refusal of the envelope the session is reset (RSET) for
        the next message; after any other failure it is closed. Once the server invites the
        content, `before_content` gets the function that writes it and the one that gives
        the message up, and calls one of them; given up, the content never leaves, the
        session is closed and `NotStarted` raised. The final reply is awaited meanwhile: no
        turn of the event loop is spent waiting for the gate.
        """
        mail, rcpt = self._envelope(sender, recipient, message)
        previous, self._last = self._last, asyncio.get_running_loop().create_future()
        done = self._last
        progress = _Progress(self)
        envelope = _Envelope(mail + rcpt + b"DATA\r\n")
        try:
            if self._pipelining:
                self._send_envelope(envelope)
            if previous is not None:
                await previous
            replies = await self._envelope_replies(envelope, mail, rcpt)
            await self._check_envelope(replies, recipient)
            progress.invited = True
            return await self._content(progress, message, recipient, before_content)
        finally:
            if progress.invited and not progress.sent_content:
                # After 354 the server waits for content, and SMTP has no way to cancel it:
                # closing the connection before the final dot aborts the transaction
                # (RFC 5321 section 4.1.1.4), so nothing is delivered.
                self.close()
            if not progress.sent_content:
                # The envelopes held behind this one go now, after its RSET if it had one.
                self._send_content()
            done.set_result(None)

    async def _content(
        self,
        progress: _Progress,
        message: bytes,
        recipient: str,
        before_content: ContentGate | None,
    ) -> int:
        """Once the server invited the content: send it (through `before_content` if
        given) and read the verdict; the 2xx code, or the error the module describes."""
        content = partial(progress.send_content, dot_stuffed(message))
        if before_content is None:
            content()
        else:
            before_content(content, progress.give_up)
        try:
            reply = await self._replies.next()
        except _SessionLost as exc:
            self.close()
            if progress.given_up:
                raise NotStarted("the send journal did not let the message start") from None
            if not progress.sent_content:
                raise TransientSmtpError(f"before the content: {exc}") from None
            # The content has left: the server may have accepted the message.
            raise AmbiguousSmtpError(f"after the content: {exc}") from None
        if reply.code != 250:
            # The transaction is over either way (RFC 5321 section 4.1.1.4): no RSET,
            # which would reset the next transaction, whose envelope may have left.
            raise self._refusal("DATA", reply, recipient, otherwise=AmbiguousSmtpError)
        return reply.code

    async def _envelope_replies(self, envelope: _Envelope, mail: bytes, rcpt: bytes) -> list[Reply]:
        """The replies to MAIL, RCPT and DATA. Pipelined, the envelope has been written
        already (or its write failed); without pipelining the commands go one at a time and
        stop at the first refusal."""
        try:
            if self._pipelining:
                if not envelope.sent:
                    raise _SessionLost("connection closed")
                return [await self._replies.next() for _ in range(3)]
            replies: list[Reply] = []
            for command in (mail, rcpt, b"DATA\r\n"):
                self._write(command)
                envelope.sent = True
                replies.append(await self._replies.next())
                if replies[-1].code not in (250, 251, 354):
                    break
            return replies
        except _SessionLost as exc:
            self.close()
            if not envelope.sent:
                raise Unsent(f"before the message: {exc}") from None
            raise TransientSmtpError(f"before the content: {exc}") from None

    def _send_envelope(self, envelope: _Envelope) -> None:
        """Write a pipelined envelope now, or hold it until the content ahead of it leaves."""
        if self._holding:
            self._held.append(envelope)
            return
        self._holding = True
        self._write_with(b"", [envelope])

    def _send_content(self, data: bytes = b"") -> None:
        """Write a message's content, and the envelopes held behind it in the same write;
        without content (the transaction ended before it), just those envelopes."""
        held, self._held = self._held, []
        self._holding = bool(held)
        if data or held:
            self._write_with(data, held)

    def _write_with(self, data: bytes, envelopes: list[_Envelope]) -> None:
        """Write `data` and then `envelopes` in one write, noting which envelopes left."""
        try:
            self._write(b"".join((data, *(e.data for e in envelopes))) if envelopes else data)
        except _SessionLost:
            # A connection already lost shows when the replies are read.
            return
        for envelope in envelopes:
            envelope.sent = True

    def _envelope(self, sender: str, recipient: str, message: bytes) -> tuple[bytes, bytes]:
        """The MAIL and RCPT command lines for one message."""
        if _CONTROL.search(sender) or _CONTROL.search(recipient):
            raise PermanentSmtpError("the address cannot be sent over SMTP")
        options = b""
        encoding = "ascii"
        if not (sender.isascii() and recipient.isascii()):
            # RFC 6531: a non-ASCII address may only travel to a server offering SMTPUTF8.
            if not self._smtputf8:
                raise PermanentSmtpError(
                    "the address is not ASCII and the server does not support SMTPUTF8"
                )
            options += b" SMTPUTF8"
            encoding = "utf-8"
        if self._8bitmime and not message.isascii():
            # RFC 6152: declare 8-bit content to a server that accepts it.
            options += b" BODY=8BITMIME"
        return (
            b"MAIL FROM:<" + sender.encode(encoding) + b">" + options + b"\r\n",
            b"RCPT TO:<" + recipient.encode(encoding) + b">\r\n",
        )

    async def _check_envelope(self, replies: list[Reply], recipient: str) -> None:
        """Raise the refusal among the replies to MAIL, RCPT and DATA, if any, after
        resetting the session (RSET, RFC 5321 section 4.1.1.5) for the next transaction.

        Without pipelining the commands stop at the first refusal, so `replies` may hold
        fewer than three.
        """
        for (command, codes), reply in zip(_ENVELOPE, replies, strict=False):
            if reply.code not in codes:
                if replies[-1].code == 354:
                    # A server that refused MAIL or RCPT yet invites the content (RFC 2920
                    # section 3.1 forbids it) awaits a message: the session is unusable.
                    self.close()
                error = self._refusal(command, reply, recipient, otherwise=TransientSmtpError)
                if not self._transport.is_closing():
                    await self._reset()
                raise error

    def _refusal(
        self, command: str, reply: Reply, recipient: str, *, otherwise: type[SmtpError]
    ) -> SmtpError:
        """The error for a reply refusing `command`.

        A 5xx is permanent and a 4xx transient. Any other code is no refusal a server may
        send there: the session is out of step and closed, and the error is `otherwise`
        (transient before the content, ambiguous after).
        """
        said = redact(reply.text, recipient)
        text = f"{command} refused: {reply.code} {said}"
        match classify_reply(reply.code):
            case "failed":
                return PermanentSmtpError(text, code=reply.code, command=command, reply=said)
            case "deferred":
                return TransientSmtpError(text, code=reply.code, command=command, reply=said)
            case _:
                self.close()
                return otherwise(f"unexpected reply: {text}")

    async def _reset(self) -> None:
        """RSET after a refused envelope; drop the session if that fails."""
        try:
            self._write(b"RSET\r\n")
            if (await self._replies.next()).code != 250:
                self.close()
        except _SessionLost:
            self.close()

    def _write(self, data: bytes) -> None:
        if self._replies.lost is not None or self._transport.is_closing():
            raise _SessionLost(self._replies.lost or "connection closed")
        self._transport.write(data)


class _Progress:
    """How far one transaction got: invited to send its content, content sent, or given up
    by the send journal (which then never lets the content leave)."""

    __slots__ = ("given_up", "invited", "sent_content", "session")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.invited = self.sent_content = self.given_up = False

    def send_content(self, data: bytes) -> None:
        self.sent_content = True
        self.session._send_content(data)

    def give_up(self) -> None:
        self.given_up = True
        # The read of the verdict fails at once.
        self.session.close()


class _Envelope:
    """A transaction's pipelined MAIL, RCPT and DATA, and whether they were written."""

    __slots__ = ("data", "sent")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sent = False


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


def redact(text: str, address: str = "") -> str:
    """The server's reply text on one line, without the recipient's or any other address."""
    if address:
        text = re.sub(rf"<?{re.escape(address)}>?", _REDACTED, text, flags=re.IGNORECASE)
    return " ".join(_ADDRESS_IN_TEXT.sub(_REDACTED, text).split())
