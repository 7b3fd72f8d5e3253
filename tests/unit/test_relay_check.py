"""Relay trouble is classified by the step it came at and the reply (aiosmtplib's own
exceptions, as a session raises them): the table of issue 23, reply code, enhanced status
and redacted text kept, or the error when no reply came."""

from __future__ import annotations

import socket
import ssl

import pytest
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPConnectTimeoutError,
    SMTPException,
    SMTPHeloError,
    SMTPReadTimeoutError,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
)

from worker.relay_check import REASONS, STAGES, Trouble, classify


def raised_from(exc: BaseException, cause: BaseException) -> BaseException:
    """`exc` as `raise exc from cause` leaves it (aiosmtplib wraps OS errors so)."""
    try:
        raise exc from cause
    except BaseException as e:
        return e


def connect_error(cause: OSError) -> BaseException:
    return raised_from(SMTPConnectError(f"Error connecting to h on port 25: {cause}"), cause)


REFUSED = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 2525)")
UNTRUSTED = ssl.SSLCertVerificationError(
    1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate"
)


@pytest.mark.parametrize(
    ("stage", "exc", "reason"),
    [
        # No connection, no reply in time, a dropped connection, a name that does not resolve.
        ("connect", connect_error(REFUSED), "unreachable"),
        ("connect", SMTPConnectTimeoutError("Timed out connecting to h on port 25"), "unreachable"),
        ("connect", connect_error(socket.gaierror(-2, "Name or service not known")), "unreachable"),
        ("ehlo", SMTPReadTimeoutError("Timed out waiting for server response"), "unreachable"),
        ("mail", SMTPServerDisconnected("Connection lost"), "unreachable"),
        ("auth", SMTPServerDisconnected("Connection lost"), "unreachable"),
        # TLS: an untrusted certificate (smtps://), STARTTLS not offered, refused or failing.
        ("connect", connect_error(UNTRUSTED), "tls_failed"),
        (
            "starttls",
            SMTPException("SMTP STARTTLS extension not supported by server."),
            "tls_failed",
        ),
        ("starttls", SMTPResponseException(454, "4.7.0 TLS not available"), "tls_failed"),
        ("starttls", UNTRUSTED, "tls_failed"),
        ("starttls", SMTPServerDisconnected("Connection lost"), "tls_failed"),
        # AUTH: refused, not offered while credentials are set, or demanded at MAIL FROM.
        (
            "auth",
            SMTPAuthenticationError(535, "5.7.8 Authentication credentials invalid"),
            "auth_failed",
        ),
        (
            "auth",
            SMTPAuthenticationError(534, "5.7.9 Please log in with your web browser"),
            "auth_failed",
        ),
        ("auth", SMTPAuthenticationError(538, "5.7.11 Encryption required"), "auth_failed"),
        (
            "auth",
            SMTPAuthenticationError(454, "4.7.0 Temporary authentication failure"),
            "auth_failed",
        ),
        (
            "auth",
            SMTPException("The SMTP AUTH extension is not supported by this server."),
            "auth_failed",
        ),
        ("mail", SMTPSenderRefused(530, "5.7.0 Authentication required", ""), "auth_failed"),
        # 421 at any step: the relay is closing the channel.
        ("connect", SMTPConnectResponseError(421, "4.3.2 Service not available"), "throttled"),
        ("ehlo", SMTPHeloError(421, "4.7.0 Too many connections"), "throttled"),
        ("starttls", SMTPResponseException(421, "4.7.0 Try again later"), "throttled"),
        ("auth", SMTPAuthenticationError(421, "4.7.0 Too many failed logins"), "throttled"),
        ("mail", SMTPSenderRefused(421, "4.7.0 Rate limited", ""), "throttled"),
        # Another 4xx: throttled; another 5xx at the greeting, EHLO or MAIL FROM: refused.
        ("mail", SMTPSenderRefused(451, "4.3.0 Try again later", ""), "throttled"),
        ("connect", SMTPConnectResponseError(450, "Busy"), "throttled"),
        ("connect", SMTPConnectResponseError(554, "5.7.1 No SMTP service here"), "refused"),
        ("ehlo", SMTPHeloError(550, "5.7.1 Not from your address"), "refused"),
        ("mail", SMTPSenderRefused(550, "5.7.1 Sender not allowed", ""), "refused"),
        ("mail", SMTPSenderRefused(554, "5.7.1 Relay access denied", ""), "refused"),
    ],
)
def test_each_failure_is_the_relay_trouble_the_issue_names(
    stage: str, exc: BaseException, reason: str
) -> None:
    assert stage in STAGES
    assert reason in REASONS
    assert classify(stage, exc).reason == reason


def test_a_reply_keeps_its_code_enhanced_status_and_text() -> None:
    found = classify(
        "auth", SMTPAuthenticationError(535, "5.7.8  Authentication\n credentials invalid")
    )
    assert found == Trouble("auth_failed", 535, "5.7.8", "Authentication credentials invalid", None)
    assert found.line() == "auth_failed: 535 5.7.8 Authentication credentials invalid"


def test_a_reply_without_enhanced_status_is_kept_whole() -> None:
    found = classify("mail", SMTPSenderRefused(451, "Greylisted, try in 5.5 minutes", ""))
    assert found == Trouble("throttled", 451, None, "Greylisted, try in 5.5 minutes", None)
    assert found.line() == "throttled: 451 Greylisted, try in 5.5 minutes"


def test_addresses_and_tokens_in_a_reply_are_redacted() -> None:
    token = "A" * 100
    found = classify(
        "mail",
        SMTPSenderRefused(550, f"5.7.1 <ann@example.com> not allowed (ref {token})", ""),
    )
    assert found.reply is not None
    assert "ann@example.com" not in found.reply and token not in found.reply
    assert found.reply.endswith("not allowed (ref <token>)")


def test_without_a_reply_the_error_is_the_operating_systems() -> None:
    found = classify("connect", connect_error(REFUSED))
    assert found == Trouble(
        "unreachable",
        error="ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 2525)",
    )
    assert found.line().startswith("unreachable: ConnectionRefusedError: [Errno 111]")
    timeout = classify("connect", SMTPConnectTimeoutError("Timed out connecting to h on port 25"))
    assert timeout.error == "SMTPConnectTimeoutError: Timed out connecting to h on port 25"
