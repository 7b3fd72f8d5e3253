"""Unit tests of `worker.dsn.classify` over sample reports, and its totality on any bytes."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.dsn import Verdict, VerdictKind, classify, specific_status

SAMPLES = Path(__file__).parent / "feedback_samples"
REASONS = {"dsn", "arf", "detector", "auto_reply", "unrecognised", "malformed"}


def sample(name: str) -> bytes:
    return (SAMPLES / f"{name}.eml").read_bytes()


def edit(raw: bytes, old: bytes, new: bytes) -> bytes:
    """`raw` with its one occurrence of `old` (in LF or CRLF form) replaced by `new`."""
    if old not in raw:
        old, new = old.replace(b"\n", b"\r\n"), new.replace(b"\n", b"\r\n")
    assert raw.count(old) == 1, old
    return raw.replace(old, new)


def assert_well_formed(verdict: Verdict) -> None:
    assert verdict.kind in get_args(VerdictKind)
    assert verdict.reason in REASONS
    assert verdict.status is None or re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", verdict.status)
    message_id = verdict.original_message_id
    assert message_id is None or re.fullmatch(r"[!-~]{1,998}", message_id)


SAMPLE_VERDICTS: list[tuple[str, VerdictKind, str | None, str | None, str]] = [
    ("postfix_hard", "hard", "5.1.1", "invitation-1@client.example", "dsn"),
    ("postfix_delayed", "soft", "4.4.1", "invitation-2@client.example", "dsn"),
    # Postfix gives up after its queue lifetime with Action: failed and a 4.x.x status.
    ("postfix_expired", "soft", "4.2.2", "invitation-3@client.example", "dsn"),
    ("gmail_hard", "hard", "5.1.1", "invitation-4@client.example", "dsn"),
    ("exchange_hard", "hard", "5.1.10", "invitation-5@client.example", "dsn"),
    ("exchange_policy", "policy", "5.7.1", "invitation-6@client.example", "dsn"),
    # Exim: Status 5.0.0, the real code (a Spamhaus block, 5.7.1) in the Diagnostic-Code.
    ("exim_dsn_policy", "policy", "5.7.1", "invitation-10@client.example", "dsn"),
    ("yahoo_plain", "hard", None, "invitation-7@client.example", "detector"),
    ("exim_plain", "hard", "5.1.1", "invitation-8@client.example", "detector"),
    ("arf_abuse", "complaint", None, "invitation-9@client.example", "arf"),
    ("out_of_office", "ignore", None, None, "auto_reply"),
    ("human_reply", "ignore", None, None, "unrecognised"),
]


@pytest.mark.parametrize(("name", "kind", "status", "message_id", "reason"), SAMPLE_VERDICTS)
def test_sample(
    name: str, kind: VerdictKind, status: str | None, message_id: str | None, reason: str
) -> None:
    raw = sample(name)
    expected = Verdict(kind, status, message_id, reason)
    assert classify(raw) == expected
    # The same message with the other line ending.
    lf = raw.replace(b"\r\n", b"\n")
    other = lf if lf != raw else raw.replace(b"\n", b"\r\n")
    assert classify(other) == expected


def test_every_sample_is_tested() -> None:
    assert {p.stem for p in SAMPLES.glob("*.eml")} == {case[0] for case in SAMPLE_VERDICTS}


# --- DSN per-recipient blocks --------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "status", "kind", "found"),
    [
        ("failed", "5.1.1 (user unknown)", "hard", "5.1.1"),
        ("failed (bad destination mailbox address)", "5.1.1", "hard", "5.1.1"),
        ("FAILED", "5.01.001", "hard", "5.1.1"),
        ("failed", "5.7.26", "policy", "5.7.26"),
        ("failed", "4.7.0", "soft", "4.7.0"),
        ("delayed", "4.4.7", "soft", "4.4.7"),
        # 5.0.0 says only the class: the Diagnostic-Code's 5.1.1 says more.
        ("delayed", "5.0.0", "soft", "5.1.1"),
        ("delivered", "2.0.0", "ignore", "2.0.0"),
        ("relayed", "2.0.0", "ignore", "2.0.0"),
        ("expanded", "2.0.0", "ignore", "2.0.0"),
        ("delivered", "5.1.1", "ignore", "5.1.1"),
        # opensmtpd says "error" for "failed".
        ("error", "5.2.2", "hard", "5.2.2"),
        # A failure with a success status contradicts itself: not a reason to give up.
        ("failed", "2.0.0", "soft", "2.0.0"),
        ("", "5.1.1", "hard", "5.1.1"),
    ],
)
def test_dsn_action_and_status(action: str, status: str, kind: str, found: str | None) -> None:
    raw = edit(sample("postfix_hard"), b"Action: failed\nStatus: 5.1.1\n", b"")
    raw = edit(
        raw, b"Final-Recipient:", f"Action: {action}\nStatus: {status}\nFinal-Recipient:".encode()
    )
    verdict = classify(raw)
    assert (verdict.kind, verdict.status, verdict.reason) == (kind, found, "dsn")
    assert verdict.original_message_id == "invitation-1@client.example"


@pytest.mark.parametrize(
    ("status", "diagnostic", "kind", "found"),
    [
        # A bogus Status: the Diagnostic-Code's status when it agrees on the class.
        ("5.X.X", "smtp; 550 5.1.1 User unknown", "hard", "5.1.1"),
        ("bogus", "smtp; 550 5.1.1 User unknown", "hard", "5.1.1"),
        ("", "smtp; 550-5.7.1 Blocked", "policy", "5.7.1"),
        ("5.X.X", "smtp; 550 User unknown", "hard", None),
        ("5.7", "smtp; 550 Blocked", "policy", None),
        ("5.1.1.1", "smtp; 550 no", "hard", None),
        ("5.1.9999", "smtp; 550 no", "hard", None),
        ("4", "smtp; 550 5.1.1 User unknown", "soft", None),
        ("garbage", "smtp; 452 Mailbox full", "soft", None),
        ("garbage", "smtp; Connection timed out [192.0.2.25]", "hard", None),
        ("\x00\x7f\udcff", "\x01", "hard", None),
    ],
)
def test_dsn_bogus_status(status: str, diagnostic: str, kind: str, found: str | None) -> None:
    raw = edit(
        sample("postfix_hard"),
        b"Status: 5.1.1\n",
        f"Status: {status}\n".encode("utf-8", "surrogateescape"),
    )
    raw = re.sub(
        rb"Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.net>: Recipient address\r?\n"
        rb"    rejected: User unknown in virtual mailbox table",
        f"Diagnostic-Code: {diagnostic}".encode(),
        raw,
    )
    verdict = classify(raw)
    assert (verdict.kind, verdict.status, verdict.reason) == (kind, found, "dsn")


def block(action: str, status: str) -> bytes:
    return (
        f"Final-Recipient: rfc822; r@example.net\nAction: {action}\nStatus: {status}\n\n".encode()
    )


@pytest.mark.parametrize(
    ("blocks", "kind", "found"),
    [
        ([("delayed", "4.4.1"), ("failed", "5.7.1"), ("failed", "5.1.1")], "hard", "5.1.1"),
        ([("failed", "5.1.1"), ("failed", "5.7.1")], "hard", "5.1.1"),
        ([("delivered", "2.0.0"), ("failed", "5.7.1"), ("delayed", "4.4.1")], "policy", "5.7.1"),
        ([("delivered", "2.0.0"), ("delayed", "4.4.1")], "soft", "4.4.1"),
        ([("relayed", "2.0.0"), ("delivered", "2.1.5")], "ignore", "2.0.0"),
    ],
)
def test_dsn_most_severe_block_wins(
    blocks: list[tuple[str, str]], kind: VerdictKind, found: str
) -> None:
    raw = sample("postfix_hard")
    start = raw.index(b"Final-Recipient:")
    end = raw.index(b"--4TqZx21bLmz9vB2", start)
    raw = raw[:start] + b"".join(block(a, s) for a, s in blocks) + raw[end:]
    assert classify(raw) == Verdict(kind, found, "invitation-1@client.example", "dsn")


def test_global_delivery_status() -> None:
    """RFC 6533's message/global-delivery-status, which the parser reads as one message."""
    raw = edit(
        sample("postfix_hard"),
        b"Content-Type: message/delivery-status\n",
        b"Content-Type: message/global-delivery-status\n",
    )
    assert classify(raw) == Verdict("hard", "5.1.1", "invitation-1@client.example", "dsn")


def test_an_unreadable_dsn_is_read_by_the_detectors() -> None:
    raw = sample("postfix_hard")
    raw = re.sub(rb"Final-Recipient:.*?mailbox table\n", b"", raw, flags=re.DOTALL)
    assert b"Status:" not in raw
    # Postfix before 2.3 signed its notification so, which flufl.bounce knows.
    raw = edit(raw, b"The mail system\n", b"The Postfix program\n")
    assert classify(raw) == Verdict("hard", "5.1.1", "invitation-1@client.example", "detector")


def test_gmail_x_original_message_id_stands_in_for_the_returned_message() -> None:
    raw = edit(sample("gmail_hard"), b"\r\nMessage-ID: <invitation-4@client.example>", b"")
    assert classify(raw).original_message_id == "invitation-4@client.example"
    raw = edit(raw, b"X-Original-Message-ID: <invitation-4@client.example>\r\n", b"")
    assert classify(raw) == Verdict("hard", "5.1.1", None, "dsn")


# --- original_message_id -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"<invitation-1@client.example>", "invitation-1@client.example"),
        (b"invitation-1@client.example", "invitation-1@client.example"),
        (b"  < invitation-1@client.example >  ", "invitation-1@client.example"),
        (b"\n <invitation-1@client.example>", "invitation-1@client.example"),
        (b"<invitation 1@client.example>", None),
        (b"<invitation-1@client.example> <invitation-2@client.example>", None),
        (b"<invitation-\x011@client.example>", None),
        (b"<invitation-\x7f1@client.example>", None),
        (b"<invitation-\xc3\xa91@client.example>", None),
        (b"<>", None),
        (b"", None),
        (b"<" + b"a" * 998 + b">", "a" * 998),
        (b"<" + b"a" * 999 + b">", None),
    ],
)
def test_original_message_id(value: bytes, expected: str | None) -> None:
    for name in ("postfix_hard", "postfix_expired", "arf_abuse"):
        raw = sample(name)
        raw = re.sub(
            rb"Message-ID:\s*<invitation-\d+@client.example>", b"Message-ID: " + value, raw
        )
        verdict = classify(raw)
        assert verdict.original_message_id == expected, name
        assert_well_formed(verdict)


# --- complaints --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("feedback_type", "kind"),
    [
        (b"abuse", "complaint"),
        (b"fraud", "complaint"),
        (b"virus", "complaint"),
        (b"other", "complaint"),
        (b"Abuse (user clicked spam)", "complaint"),
        (b"", "complaint"),
        (b"not-spam", "ignore"),
        (b"auth-failure", "ignore"),
    ],
)
def test_arf_feedback_type(feedback_type: bytes, kind: VerdictKind) -> None:
    raw = edit(sample("arf_abuse"), b"Feedback-Type: abuse", b"Feedback-Type: " + feedback_type)
    assert classify(raw) == Verdict(kind, None, "invitation-9@client.example", "arf")


def test_arf_is_recognised_by_its_part_without_report_type() -> None:
    raw = edit(sample("arf_abuse"), b"report-type=feedback-report;", b"")
    assert classify(raw) == Verdict("complaint", None, "invitation-9@client.example", "arf")


# --- non-standard bounces ----------------------------------------------------------------


def test_detector_policy_and_soft() -> None:
    raw = sample("exim_plain")
    blocked = edit(raw, b"550 5.1.1 <absent@example.net>", b"550 5.7.1 <absent@example.net>")
    assert classify(blocked).kind == "policy"
    warning = (
        b"From: Mail Delivery System <MAILER-DAEMON@relay.example.net>\n"
        b"Subject: Warning: message delayed\nAuto-Submitted: auto-replied\n\n"
        b"This is an advisory-only email. Please do not reply to it.\n\n"
        b"Delivery to the following recipient has been delayed:\n\n     slow@example.net\n\n"
        b"Message will be retried for 2 more day(s)\n\n451 4.4.1 Connection timed out\n"
    )
    assert classify(warning) == Verdict("soft", "4.4.1", None, "detector")


def test_detector_reads_a_raw_non_ascii_from() -> None:
    raw = edit(sample("yahoo_plain"), b"From: MAILER-DAEMON", b"From: M\xe4iler <MAILER-DAEMON")
    raw = edit(raw, b"@yahoo.com\n", b"@yahoo.com>\n")
    assert classify(raw) == Verdict("hard", None, "invitation-7@client.example", "detector")


# --- automatic replies -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"Auto-Submitted: auto-replied", "auto_reply"),
        (b"Auto-Submitted: auto-generated", "auto_reply"),
        (b"Auto-Submitted: Auto-Replied; owner-email=sam.person@example.net", "auto_reply"),
        (b"Auto-Submitted: no", "unrecognised"),
        (b"Auto-Submitted: no (a person wrote this)", "unrecognised"),
        (b"X-Autoreply: yes", "auto_reply"),
        (b"X-Autorespond: Out of office", "auto_reply"),
        (b"Precedence: auto_reply", "auto_reply"),
        (b"Precedence: bulk", "unrecognised"),
        (b"X-Auto-Response-Suppress: All", "unrecognised"),
        (b"Subject: Out of Office: Your opinion on our service", "auto_reply"),
        (b"Subject: AUTO: Sam Person is out of the office", "auto_reply"),
        (b"Subject: =?utf-8?q?R=C3=A9ponse_automatique_=3A_Your_opinion?=", "auto_reply"),
        (b"Subject: =?utf-8?b?QXV0b21hdGlzY2hlIEFudHdvcnQ=?=", "auto_reply"),
        (b"Subject: =?bogus?b?!!!?=", "unrecognised"),
    ],
)
def test_auto_reply_markers(header: bytes, reason: str) -> None:
    raw = edit(sample("human_reply"), b"Subject: Re: Your opinion on our service\n", b"")
    raw = header + b"\n" + raw
    assert classify(raw) == Verdict("ignore", None, None, reason)


# --- totality and speed ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe",
        b"\n\nno headers at all",
        b"From: a@example.net\n"
        + b"".join(
            b"Content-Type: multipart/mixed; boundary=%d\n\n--%d\n" % (i, i) for i in range(5000)
        ),
    ],
)
def test_malformed(raw: bytes) -> None:
    assert classify(raw) == Verdict("ignore", None, None, "malformed")


def test_ten_megabytes_are_quick() -> None:
    padding = b"X-Padding: " + b"x" * 70 + b"\n"
    bounce = edit(
        sample("postfix_hard"), b"List-Unsubscribe:", padding * 140_000 + b"List-Unsubscribe:"
    )
    reply = sample("human_reply") + b"> a quoted line of an earlier message\n" * 280_000
    blank = b"From: a@example.net\n\n" + b"\n" * 10_000_000
    for raw, verdict in (
        (bounce, Verdict("hard", "5.1.1", "invitation-1@client.example", "dsn")),
        (reply, Verdict("ignore", None, None, "unrecognised")),
        (blank, Verdict("ignore", None, None, "unrecognised")),
    ):
        assert len(raw) > 10_000_000
        started = time.perf_counter()
        assert classify(raw) == verdict
        assert time.perf_counter() - started < 2


@given(st.binary(max_size=4096))
def test_any_bytes_give_a_verdict(raw: bytes) -> None:
    assert_well_formed(classify(raw))


NAMES = sorted(p.stem for p in SAMPLES.glob("*.eml"))
mutations = st.lists(
    st.tuples(
        st.sampled_from(["replace", "insert", "delete", "truncate"]),
        st.floats(min_value=0, max_value=1),
        st.binary(max_size=12)
        | st.sampled_from([b"\n", b"\r\n", b"\n\n", b":", b";", b"<", b">", b"--", b"=?", b"\x00"]),
    ),
    min_size=1,
    max_size=12,
)


@given(st.sampled_from(NAMES), mutations)
def test_mutated_samples_give_a_verdict(name: str, edits: list[tuple[str, float, bytes]]) -> None:
    raw = sample(name)
    for op, where, data in edits:
        at = int(where * len(raw))
        if op == "replace":
            raw = raw[:at] + data + raw[at + len(data) :]
        elif op == "insert":
            raw = raw[:at] + data + raw[at:]
        elif op == "delete":
            raw = raw[:at] + raw[at + len(data) + 1 :]
        else:
            raw = raw[:at]
    assert_well_formed(classify(raw))


@given(
    st.one_of(
        st.tuples(st.just("hard"), st.just("failed"), st.just(5), st.just(1)),
        st.tuples(st.just("policy"), st.just("failed"), st.just(5), st.just(7)),
        st.tuples(
            st.just("soft"), st.sampled_from(["failed", "delayed"]), st.just(4), st.integers(0, 999)
        ),
    ),
    st.integers(0, 999),
    st.sampled_from(["", " (comment)", "  "]),
)
def test_a_valid_dsn_is_read_by_its_status(
    case: tuple[VerdictKind, str, int, int], detail: int, suffix: str
) -> None:
    kind, action, klass, subject = case
    status = f"{klass}.{subject}.{detail}"
    raw = edit(
        sample("exchange_hard"),
        b"Action: failed\r\nStatus: 5.1.10\r\n",
        f"Action: {action}\r\nStatus: {status}{suffix}\r\n".encode(),
    )
    assert classify(raw) == Verdict(kind, status, "invitation-5@client.example", "dsn")


# --- X.0.0 statuses defer to the diagnostic's -----------------------------------------------

EXIM_DIAGNOSTIC = (
    b"Diagnostic-Code: smtp; 550 5.7.1 Service unavailable; Client host [198.51.100.7] blocked"
    b" using zen.spamhaus.org"
)


@pytest.mark.parametrize(
    ("status", "diagnostic", "kind", "found"),
    [
        ("5.0.0", "smtp; 550 5.1.1 <blocked@example.net>: User unknown", "hard", "5.1.1"),
        ("5.0.0", "smtp; 550 5.7.26 Unauthenticated email", "policy", "5.7.26"),
        ("5.0.0", "smtp; 550 5.0.0 then 5.7.1 policy", "policy", "5.7.1"),
        ("5.0.0", "smtp; 550 Service unavailable", "hard", "5.0.0"),
        # Only a status of the same class says more of a 5.0.0.
        ("5.0.0", "smtp; 450 4.7.1 Try later", "hard", "5.0.0"),
        ("4.0.0", "smtp; 450 4.7.1 Greylisted", "soft", "4.7.1"),
        # A specific Status stands, whatever the diagnostic says.
        ("5.1.1", "smtp; 550 5.7.1 blocked", "hard", "5.1.1"),
        ("5.7.1", "smtp; 550 5.1.1 unknown", "policy", "5.7.1"),
    ],
)
def test_an_unspecified_status_defers_to_the_diagnostic(
    status: str, diagnostic: str, kind: VerdictKind, found: str
) -> None:
    raw = edit(sample("exim_dsn_policy"), b"Status: 5.0.0\n", f"Status: {status}\n".encode())
    raw = edit(raw, EXIM_DIAGNOSTIC, f"Diagnostic-Code: {diagnostic}".encode())
    assert classify(raw) == Verdict(kind, found, "invitation-10@client.example", "dsn")


def test_an_exim_plain_bounce_with_an_unspecified_status_reads_the_specific_one() -> None:
    raw = edit(
        sample("exim_plain"),
        b"550 5.1.1",
        b"550 5.0.0 refused: 5.7.1 blocked using zen.spamhaus.org",
    )
    assert classify(raw).kind == "policy"


STATUSES = st.builds(
    "{}.{}.{}".format, st.sampled_from("245"), st.integers(0, 999), st.integers(0, 999)
)


@given(st.lists(STATUSES, max_size=6))
def test_specific_status_is_the_first_unless_it_is_unspecified(statuses: list[str]) -> None:
    found = specific_status(statuses)
    if not statuses:
        assert found is None
        return
    first = statuses[0]
    klass = first[0]
    better = [s for s in statuses[1:] if s[0] == klass and not s.endswith(".0.0")]
    if first.endswith(".0.0") and better:
        assert found == better[0]
    else:
        assert found == first


@given(
    st.sampled_from(["5", "4"]),
    st.integers(1, 999),
    st.integers(0, 999),
    st.sampled_from(["smtp; 550 ", "smtp;550-", "X-Postfix; ", ""]),
)
def test_a_dsn_with_an_unspecified_status_is_classified_by_the_diagnostic(
    klass: str, subject: int, detail: int, prefix: str
) -> None:
    specific = f"{klass}.{subject}.{detail}"
    raw = edit(sample("exim_dsn_policy"), b"Status: 5.0.0\n", f"Status: {klass}.0.0\n".encode())
    raw = edit(raw, EXIM_DIAGNOSTIC, f"Diagnostic-Code: {prefix}{specific} text".encode())
    kind: VerdictKind = "soft" if klass == "4" else "policy" if subject == 7 else "hard"
    assert classify(raw) == Verdict(kind, specific, "invitation-10@client.example", "dsn")
