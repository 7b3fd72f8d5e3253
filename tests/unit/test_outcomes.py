"""Unit tests of the pure SMTP-outcome classification."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.outcomes import classify_reply, is_hard_bounce


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (250, "sent"),
        (251, "sent"),
        (421, "deferred"),
        (451, "deferred"),
        (452, "deferred"),
        (550, "failed"),
        (554, "failed"),
        (354, "unknown"),
        (199, "unknown"),
        (600, "unknown"),
        (-1, "unknown"),
    ],
)
def test_classify_reply(code: int, outcome: str) -> None:
    assert classify_reply(code) == outcome


@given(st.integers(min_value=200, max_value=599))
def test_the_first_digit_decides(code: int) -> None:
    expected = {2: "sent", 3: "unknown", 4: "deferred", 5: "failed"}[code // 100]
    assert classify_reply(code) == expected


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (550, "5.1.1 <bob@example.com>: Recipient address rejected: User unknown"),
        (
            550,
            "5.1.1 The email account that you tried to reach does not exist. Please try\n"
            "5.1.1 double-checking the recipient's email address for typos",
        ),
        (550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"),
        (550, "5.1.2 Host or domain name not found"),
        (556, "5.1.10 Recipient address has null MX"),
        (550, "5.0.0 <bob@example.com>... User unknown"),
        (550, "No such user here"),
        (551, "sorry, mailbox unknown"),
        (553, "Requested action not taken: user does not exist"),
        (550, "Unknown recipient"),
    ],
)
def test_hard_bounces(code: int, message: str) -> None:
    assert is_hard_bounce(code, message)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (550, "5.7.1 Message rejected as spam"),
        (550, "5.7.1 Recipient address rejected: user unknown"),
        (554, "5.7.1 Service unavailable; client host blocked"),
        (552, "5.2.2 Mailbox full"),
        (550, "5.1.0 Sender address rejected"),
        (451, "4.1.1 Mailbox unknown, try again later"),
        (450, "User unknown"),
        (554, "No such user here"),
        (550, "Requested action not taken: mailbox unavailable"),
        (550, "Relaying from 10.5.1.1 denied"),
        (551, "User not local; please try <bob@example.org>"),
        (250, "5.1.1 OK"),
    ],
)
def test_not_hard_bounces(code: int, message: str) -> None:
    assert not is_hard_bounce(code, message)


@given(st.integers(), st.text())
def test_only_5xx_can_be_a_hard_bounce(code: int, message: str) -> None:
    if is_hard_bounce(code, message):
        assert 500 <= code < 600


@given(st.integers(min_value=500, max_value=599), st.integers(0, 999), st.text())
def test_policy_rejections_are_never_hard_bounces(code: int, detail: int, text: str) -> None:
    assert not is_hard_bounce(code, f"5.7.{detail} {text}")
