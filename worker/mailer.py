"""Deliver one message to one recipient over a small pool of persistent SMTP connections.

Every outcome other than acceptance is one of the errors in `worker.errors`, chosen by what
is known about the message: `TransientSmtpError` (nothing was delivered, try later),
`PermanentSmtpError` (the server refused for good) or `AmbiguousSmtpError` (the content
went out but no verdict came back, so it may have been delivered).
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

from worker import relay_check
from worker.errors import RelayTrouble, SmtpError
from worker.outcomes import enhanced_status
from worker.relay_config import Relay
from worker.smtp_session import ContentGate, Session, Unsent


class Mailer(Protocol):
    """What the send path needs from an SMTP client; `SmtpPool` is the real one."""

    async def send(
        self,
        *,
        sender: str,
        recipient: str,
        message: bytes,
        before_content: ContentGate | None = None,
    ) -> int:
        """Deliver `message` to `recipient`; return the 2xx code or raise an `SmtpError`.

        `before_content` gets the function that writes the content once the server invites
        it and the one that gives the message up, and calls one of them; given up, the
        message stops before any of it leaves (`NotStarted`).
        """
        ...


class SmtpPool:
    """At most `relay.connections` SMTP sessions to one relay, opened on first use and
    kept open.

    Each `send` takes a place on a session for one transaction (MAIL, RCPT, DATA, pipelined
    when the server offers PIPELINING) and hands it back. A session has two places, so the
    next message's envelope can go with the content of the one before (worker/smtp_session.py).
    A session the server refused a message on is reset (RSET) and reused, one that failed is
    closed and reopened by the next `send` that comes to it. TLS follows `relay.tls` and
    never falls back to plaintext. Trouble with the relay itself raises `RelayTrouble`.
    """

    def __init__(self, relay: Relay) -> None:
        if relay.connections < 1:
            raise ValueError("an SMTP pool needs at least one connection")
        self._config = relay
        # The free places, last in, first out: a burst reuses the sessions already open,
        # and a session is opened only when that many sends really run at once.
        slots = [_Slot() for _ in range(relay.connections)]
        self._free: list[_Slot] = [*slots, *slots][::-1]
        # Those waiting for a place (here or on another pool too: see `watch`).
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def send(
        self,
        *,
        sender: str,
        recipient: str,
        message: bytes,
        before_content: ContentGate | None = None,
        place: Place | None = None,
    ) -> int:
        """Deliver `message` (the complete RFC 5322 bytes) from `sender` to `recipient`, on
        `place` (one `take` gave) or on the next place free.

        Returns the server's 2xx reply code. Raises `TransientSmtpError` for a 4xx reply or
        a connection failure or timeout before the content was sent, `PermanentSmtpError`
        for a 5xx reply (or an address the server cannot take, code None), and
        `AmbiguousSmtpError` when the connection is lost while the content is transferred,
        and `NotStarted` when `before_content` gave the message up. No error message
        contains the recipient's address.
        """
        slot = place if place is not None else await self._take()
        try:
            # A message that waited its turn on a session that broke, before any of it
            # left (`Unsent`), goes once more, on the session reopened.
            retried = False
            while True:
                session = await self._session(slot)
                try:
                    return await session.deliver(
                        sender=sender,
                        recipient=recipient,
                        message=message,
                        before_content=before_content,
                    )
                except Unsent:
                    if retried:
                        raise
                    retried = True
                except RelayTrouble:
                    raise
                except SmtpError as e:
                    reason = _relay_fault(e)
                    if reason is None:
                        raise
                    raise RelayTrouble(
                        reason,
                        relay=self._config.name,
                        code=e.code,
                        status=enhanced_status(e.reply),
                        reply=e.reply,
                    ) from e
        except asyncio.CancelledError:
            # Cancelled in the middle of a command: the session's state is unknown.
            if slot.session is not None:
                slot.session.close()
            raise
        finally:
            self._free.append(slot)
            self.wake()

    def take(self) -> Place | None:
        """A free place, now, or None."""
        return self._free.pop() if self._free else None

    def watch(self, waiter: asyncio.Future[None], *, again: bool = False) -> None:
        """Resolve `waiter` when a place is free, unless it is done by then (another pool
        it watches woke it, or it was cancelled): in turn, or first when it waits `again`
        (woken, it found the place taken), so messages keep their order."""
        if again:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)

    def wake(self) -> None:
        """Wake the first waiter still waiting, if a place is free (one per place freed:
        waking more would send the rest to the back of the line)."""
        while self._free and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _take(self) -> Place:
        again = False
        while (place := self.take()) is None:
            waiter = asyncio.get_running_loop().create_future()
            self.watch(waiter, again=again)
            await waiter
            again = True
        return place

    async def close(self) -> None:
        """Close every session once the sends in flight are done; later sends reopen them."""
        places = [await self._take() for _ in range(2 * self._config.connections)]
        slots = list({id(slot): slot for slot in places}.values())
        try:
            await asyncio.gather(*(s.session.quit() for s in slots if s.session is not None))
        finally:
            for slot in slots:
                slot.session = None
            self._free.extend(places[::-1])
            for _ in places:
                self.wake()

    async def _session(self, slot: _Slot) -> Session:
        """The slot's session, opened again if it is gone or broken."""
        session = slot.session
        if session is not None and session.usable:
            return session
        async with slot.opening:
            # The slot's other place may have opened it meanwhile.
            session = slot.session
            if session is None or not session.usable:
                if session is not None:
                    session.close()
                slot.session = None
                session = slot.session = await self._open()
            return session

    async def _open(self) -> Session:
        """A session opened as `relay_check.open_session` does it (connect, EHLO, TLS as
        configured, login), carried on by `Session`.

        None of this concerns the recipient: every failure here is the relay's
        (`RelayTrouble`), and the message waits until the relay is fixed.
        """
        smtp, _features = await relay_check.open_session(self._config)
        return Session.take_over(smtp, timeout=self._config.timeout)


@dataclass(eq=False)
class _Slot:
    """A session of the pool: open, or None until one is needed. Each is two places."""

    session: Session | None = None
    # Held while the session is being opened, so that its two places open it once.
    opening: asyncio.Lock = field(default_factory=asyncio.Lock)


# A place taken on one of a pool's sessions (the session itself), for one transaction.
Place = _Slot


def _relay_fault(e: SmtpError) -> str | None:
    """The relay trouble a refusal in a transaction shows, or None when it concerns the
    recipient: a 421 at any step (the relay is closing), and a refused MAIL FROM, which
    names the client's sender, never the recipient (530 and the other AUTH codes: the
    relay wants a login)."""
    if e.code == 421:
        return "throttled"
    if e.command == "MAIL FROM" and e.code is not None:
        if e.code in relay_check.AUTH_CODES:
            return "auth_failed"
        if e.code >= 500:
            return "refused"
    return None
