"""Relay trouble: what a failure says about the relay, and the probe that tells whether a
relay carries mail (`survey-worker check-relay`, the worker at start and while it waits).

A failure is the relay's, not the recipient's, when it comes before any recipient was
named: the connection, TLS, the login, a 421 (the relay is closing) or a refused MAIL FROM.
`classify` names it with one of REASONS and keeps the relay's reply (addresses and tokens
redacted) or, when no reply came, the error.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass

from aiosmtplib import (
    SMTP,
    SMTPAuthenticationError,
    SMTPException,
    SMTPResponseException,
)

from worker import logs
from worker.errors import RelayTrouble
from worker.relay_config import Relay

REASONS = ("unreachable", "tls_failed", "auth_failed", "throttled", "refused")
# The steps of a session before the first recipient, in order.
STAGES = ("connect", "ehlo", "starttls", "auth", "mail")
# RFC 4954 section 6: authentication required (530), mechanism too weak (534), credentials
# invalid (535), encryption required for the mechanism (538).
AUTH_CODES = frozenset({530, 534, 535, 538})
# RFC 3463 section 2: class.subject.detail at the start of the reply text.
_ENHANCED_STATUS = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?:\s+|$)")


@dataclass(frozen=True)
class Trouble:
    """Why a relay carries no mail: `reason` (one of REASONS); the reply's `code`, its
    enhanced `status` (`5.7.8`) and the rest of its text as `reply`, addresses and tokens
    redacted; or, when no reply came, `error` (the exception's class and message)."""

    reason: str
    code: int | None = None
    status: str | None = None
    reply: str | None = None
    error: str | None = None

    @classmethod
    def of(cls, e: RelayTrouble) -> Trouble:
        """The trouble a `RelayTrouble` carries."""
        return cls(e.reason, code=e.code, status=e.status, reply=e.reply, error=e.error)

    def error_for(self, relay: str) -> RelayTrouble:
        """This trouble, as the error the send path raises for `relay`."""
        return RelayTrouble(
            self.reason,
            relay=relay,
            code=self.code,
            status=self.status,
            reply=self.reply,
            error=self.error,
        )

    def line(self) -> str:
        """`auth_failed: 535 5.7.8 text`, or `unreachable: ConnectionRefusedError: text`."""
        if self.code is None:
            return f"{self.reason}: {self.error}"
        said = " ".join(part for part in (str(self.code), self.status, self.reply) if part)
        return f"{self.reason}: {said}"


def reply_text(text: str) -> str:
    """A relay's reply text on one line, with any address or token in it replaced."""
    return logs.redact(" ".join(text.split()))


def classify(stage: str, exc: BaseException) -> Trouble:
    """The relay trouble that `exc`, raised at `stage` (one of STAGES), shows.

    A 421 at any step is `throttled`; an AUTH code (530, 534, 535, 538), any refusal of
    AUTH, or AUTH not offered when credentials are set is `auth_failed`; any failure of
    STARTTLS or of a TLS handshake is `tls_failed`; no connection, no reply in time or a
    dropped connection is `unreachable`; another 5xx is `refused` and another 4xx
    `throttled`.
    """
    if isinstance(exc, SMTPResponseException) and exc.code > 0:
        text = reply_text(exc.message)
        found = _ENHANCED_STATUS.match(text)
        reply = text[found.end() :] if found else text
        return Trouble(
            _reason_of_reply(stage, exc.code),
            code=exc.code,
            status=found.group(1) if found else None,
            reply=reply or None,
        )
    return Trouble(_reason_without_reply(stage, exc), error=_error(exc))


def _reason_of_reply(stage: str, code: int) -> str:
    if code == 421:
        return "throttled"
    if code in AUTH_CODES or stage == "auth":
        return "auth_failed"
    if stage == "starttls":
        return "tls_failed"
    return "refused" if code >= 500 else "throttled"


def _reason_without_reply(stage: str, exc: BaseException) -> str:
    if stage == "starttls" or any(isinstance(e, ssl.SSLError) for e in _chain(exc)):
        return "tls_failed"
    # No connection, no reply in time, a dropped connection: aiosmtplib's errors for these
    # are OSErrors (ConnectionError, TimeoutError), as are DNS failures.
    if isinstance(exc, OSError):
        return "unreachable"
    # aiosmtplib's own refusals: AUTH not offered, no mechanism in common.
    return "auth_failed" if stage == "auth" else "refused"


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from, outermost first."""
    found = [exc]
    while found[-1].__cause__ is not None and len(found) < 10:
        found.append(found[-1].__cause__)
    return found


def _error(exc: BaseException) -> str:
    """Class and message of what went wrong: the operating system's error under
    aiosmtplib's "Error connecting to …" (ConnectionRefusedError, a DNS or TLS failure)."""
    shown = next((e for e in _chain(exc)[1:] if isinstance(e, OSError) and str(e)), exc)
    return reply_text(f"{type(shown).__name__}: {shown}")


async def open_session(relay: Relay) -> tuple[SMTP, list[str]]:
    """A session with `relay` as the worker uses it: connected, EHLO, STARTTLS when
    `relay.tls` asks for it (never falling back to plaintext), EHLO again, logged in when
    it has a user name; and the features used (`TLS` or `STARTTLS`, `AUTH PLAIN`).

    Raises `RelayTrouble` for the step that failed, the connection closed.
    """
    smtp = SMTP(
        hostname=relay.host,
        port=relay.port,
        timeout=relay.timeout,
        use_tls=relay.tls == "tls",
        start_tls=False,
    )
    features = ["TLS"] if relay.tls == "tls" else []
    stage = "connect"
    try:
        await smtp.connect()
        stage = "ehlo"
        await smtp.ehlo()
        if relay.tls == "starttls":
            # RFC 3207: aiosmtplib raises before sending anything when STARTTLS is not
            # offered, so nothing goes in plaintext.
            stage = "starttls"
            await smtp.starttls()
            features.append("STARTTLS")
            # RFC 3207 section 4.2: forget what was learnt before TLS and ask again.
            stage = "ehlo"
            await smtp.ehlo()
        if relay.username is not None:
            stage = "auth"
            features.append(f"AUTH {await _login(smtp, relay.username, relay.password or '')}")
    except asyncio.CancelledError:
        smtp.close()
        raise
    except (SMTPException, OSError) as exc:
        smtp.close()
        raise classify(stage, exc).error_for(relay.name) from exc
    return smtp, features


async def probe(relay: Relay, *, sender: str = "") -> tuple[list[str], Trouble | None]:
    """Try `relay` as the worker uses it: `open_session`, then `MAIL FROM:<sender>` (the
    null sender by default), RSET and QUIT.

    Returns the features used and None when every step passed, or the trouble at the step
    that failed. Never raises for relay trouble.
    """
    try:
        smtp, features = await open_session(relay)
    except RelayTrouble as e:
        return [], Trouble.of(e)
    try:
        await smtp.mail(sender)
        await smtp.rset()
    except asyncio.CancelledError:
        smtp.close()
        raise
    except (SMTPException, OSError) as exc:
        smtp.close()
        return features, classify("mail", exc)
    try:
        await smtp.quit()
    except (SMTPException, OSError):
        smtp.close()
    return features, None


async def _login(smtp: SMTP, username: str, password: str) -> str:
    """Log in as aiosmtplib's `login` does (each mechanism both sides know, in its order,
    until one takes), which the worker uses; the mechanism that took."""
    if not smtp.supports_extension("auth"):
        raise SMTPException("the relay offers no AUTH, and a user name is set")
    refused: SMTPAuthenticationError | None = None
    for mechanism in smtp.supported_auth_methods:
        try:
            await getattr(smtp, f"auth_{mechanism.replace('-', '')}")(username, password)
        except SMTPAuthenticationError as e:
            refused = e
        else:
            return mechanism.upper()
    raise refused or SMTPException("the relay offers no AUTH mechanism the worker knows")
