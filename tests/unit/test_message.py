"""Message assembly, checked by parsing every built message back with the stdlib parser."""

from __future__ import annotations

import dataclasses
import email
import email.policy
from datetime import UTC, datetime, timedelta, timezone
from email.errors import NonPrintableDefect
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.errors import InvalidAddress, UnsafeHeaderValue
from worker.message import OutgoingMessage, build, message_id_for

UNSUBSCRIBE_URL = (
    "https://unsubscribe.example.com/unsubscribe/"
    "AcZia4IBAAAAAAAAAAeH8ThvNx8JFifVcBs2r6-aU1EsbmuHZMT-NhasBmd6YGVuCULCwveQcNOpaifyv6m1hSmf"
)
BASE = OutgoingMessage(
    sender="surveys@acme.example.com",
    sender_name="Acme Research",
    recipient="ann.smith@example.org",
    recipient_name="Ann Smith",
    subject="Five minutes for your opinion?",
    text="Hello Ann,\n\nplease take our survey: https://survey.example.com/s/1\n",
    html='<p>Hello Ann,</p>\n<p><a href="https://survey.example.com/s/1">Survey</a></p>\n',
    message_id=message_id_for(42, "acme.example.com"),
    date=datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
    list_id="Acme Research surveys <client-7.surveys.example.com>",
    unsubscribe_url=UNSUBSCRIBE_URL,
)
HEADER_FIELDS = [
    "sender",
    "sender_name",
    "recipient",
    "recipient_name",
    "subject",
    "message_id",
    "list_id",
    "unsubscribe_url",
]

# Header text: anything a header can carry (no control character but tab, no U+2028 or
# U+2029), plus the pieces that break naive encoders.
_TRICKY = st.sampled_from(
    [
        "=?",
        "?=",
        "=?utf-8?b?YQ==?=",
        "=?iso-8859-1?q?x?=",
        '"',
        "\\",
        ",",
        ";",
        ":",
        "<",
        ">",
        "@",
        "(",
        ")",
        ".",
        " ",
        "  ",
        "\t",
        "a",
        "Zoë",
        "Ünïcödé",
        "中文",
        "😀",
        "x" * 90,
        "Bcc: evil@example.net",
    ]
)
header_text = st.one_of(
    st.text(st.characters(exclude_categories=["Cs", "Cc", "Zl", "Zp"], include_characters="\t")),
    st.lists(_TRICKY, max_size=25).map("".join),
)
body_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=2000)


def _make(**changes: Any) -> OutgoingMessage:
    return dataclasses.replace(BASE, **changes)


def _parse(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")


def _header_lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def _display_name(data: bytes, field: str) -> str:
    """The display name of a From or To header, decoded as RFC 2047 section 6.2 says.

    CPython before the fix of gh-128110 keeps the white space between adjacent
    encoded-words of a display name, which the RFC says to ignore, so the name is
    decoded with `email.header`, which follows the RFC, after unfolding and unquoting.
    """
    raw = email.message_from_bytes(data)[field].replace("\r\n", "")
    name, _ = parseaddr(raw)
    return str(make_header(decode_header(name)))


@given(sender_name=header_text, recipient_name=header_text, subject=header_text)
def test_names_and_subject_decode_to_the_input(
    sender_name: str, recipient_name: str, subject: str
) -> None:
    msg = _make(sender_name=sender_name, recipient_name=recipient_name, subject=subject)
    data = build(msg)
    parsed = _parse(data)
    assert str(parsed["Subject"]) == subject
    assert [a.addr_spec for a in parsed["From"].addresses] == [msg.sender]
    assert [a.addr_spec for a in parsed["To"].addresses] == [msg.recipient]
    assert _display_name(data, "From") == sender_name
    assert _display_name(data, "To") == recipient_name
    # The parser notes the control characters it decoded, and nothing else.
    defects = [*parsed["From"].defects, *parsed["To"].defects, *parsed["Subject"].defects]
    assert all(isinstance(d, NonPrintableDefect) for d in defects)


def test_display_names_read_back_with_the_stdlib_address_parser() -> None:
    data = build(_make(sender_name="Zoë Müller-Lüdenscheidt", recipient_name='Smith, "Ann"'))
    parsed = _parse(data)
    assert parsed["From"].addresses[0].display_name == "Zoë Müller-Lüdenscheidt"
    assert parsed["To"].addresses[0].display_name == 'Smith, "Ann"'


@given(text=body_text, html=body_text)
def test_exactly_two_parts_text_then_html_with_the_exact_bodies(text: str, html: str) -> None:
    parsed = _parse(build(_make(text=text, html=html)))
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert [p.get_content_charset() for p in parts] == ["utf-8", "utf-8"]
    assert [p["Content-Transfer-Encoding"] for p in parts] == ["quoted-printable"] * 2
    assert [p.get_content() for p in parts] == [_crlf(text), _crlf(html)]
    assert not parsed.defects
    assert not any(p.defects for p in parts)


@given(
    lines=st.lists(
        st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=300)
    )
)
def test_body_lines_read_back_the_same_wherever_they_were_seen_before(lines: list[str]) -> None:
    # Encoded lines are cached: the second message meets every line again, in reverse.
    for body in ("\n".join(lines), "\n".join(reversed(lines))):
        parts = list(_parse(build(_make(text=body, html=body))).iter_parts())
        assert [p.get_content() for p in parts] == [_crlf(body)] * 2


def test_a_body_quoting_the_boundary_does_not_split_the_part() -> None:
    boundary = _parse(build(BASE)).get_boundary()
    assert boundary is not None
    text = f"before\n--{boundary}\nContent-Type: text/html\n\nafter\n--{boundary}--\n"
    parsed = _parse(build(_make(text=text)))
    assert parsed.get_boundary() == boundary
    assert [p.get_content() for p in parsed.iter_parts()] == [_crlf(text), _crlf(BASE.html)]


def test_both_unsubscribe_headers_are_present_and_correct() -> None:
    parsed = _parse(build(BASE))
    assert parsed.get_all("List-Unsubscribe") == [f"<{UNSUBSCRIBE_URL}>"]
    assert parsed.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]


def test_message_id_date_list_id_and_mime_version() -> None:
    parsed = _parse(build(BASE))
    assert parsed["Message-ID"] == "<invitation-42@acme.example.com>"
    assert parsed["Date"].datetime == BASE.date
    assert parsed["List-Id"] == BASE.list_id
    assert parsed["MIME-Version"] == "1.0"


def test_date_keeps_its_utc_offset() -> None:
    date = datetime(2024, 12, 24, 18, 5, 9, tzinfo=timezone(timedelta(hours=-5)))
    parsed = _parse(build(_make(date=date)))
    assert parsed["Date"].datetime == date
    assert str(parsed["Date"]) == "Tue, 24 Dec 2024 18:05:09 -0500"


def test_naive_date_is_refused() -> None:
    with pytest.raises(ValueError):
        build(_make(date=datetime(2024, 5, 1, 12, 30)))


def test_non_ascii_list_description_is_encoded() -> None:
    list_id = "Müller Marktforschung Umfragen <client-9.surveys.example.com>"
    data = build(_make(list_id=list_id))
    assert data.split(b"\r\n\r\n", 1)[0].isascii()
    assert _parse(data)["List-Id"] == list_id


def test_message_is_deterministic() -> None:
    assert build(BASE) == build(dataclasses.replace(BASE))


def test_message_id_for_is_deterministic_per_invitation() -> None:
    assert message_id_for(42, "acme.example.com") == "invitation-42@acme.example.com"
    assert message_id_for(42, "acme.example.com") != message_id_for(43, "acme.example.com")


@given(
    field=st.sampled_from(HEADER_FIELDS),
    position=st.integers(min_value=0),
    bad=st.sampled_from(
        [
            "\r",
            "\n",
            "\x00",
            "\r\n",
            "\r\nBcc: evil@example.net\r\n",
            "\x0b",
            "\x0c",
            "\x1c",
            "\x1f",
            "\x7f",
            "\x85",
            "\x9f",
            "\u2028",
            "\u2029Bcc: evil@example.net",
        ]
    ),
)
def test_a_character_no_header_can_carry_raises_in_any_field_without_echoing_it(
    field: str, position: int, bad: str
) -> None:
    value = getattr(BASE, field)
    at = position % (len(value) + 1)
    with pytest.raises(UnsafeHeaderValue) as caught:
        build(_make(**{field: value[:at] + bad + value[at:]}))
    assert field in str(caught.value)
    assert value not in str(caught.value)


@given(recipient_name=header_text, subject=header_text)
def test_header_values_cannot_add_a_header_or_a_recipient(
    recipient_name: str, subject: str
) -> None:
    data = build(_make(recipient_name=recipient_name, subject=subject))
    parsed = _parse(data)
    assert sorted(parsed.keys()) == sorted(
        [
            "Date",
            "From",
            "To",
            "Subject",
            "Message-ID",
            "List-Id",
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
            "MIME-Version",
            "Content-Type",
        ]
    )
    assert [a.addr_spec for a in parsed["To"].addresses] == [BASE.recipient]


@pytest.mark.parametrize(
    "address",
    [
        "ann@example.org, evil@example.net",
        "Ann <ann@example.org>",
        "ann@example.org>",
        "ann smith@example.org",
        "ann@example.org\tbcc",
        '"ann"@example.org',
        "ann",
        "",
    ],
)
def test_sender_and_recipient_must_be_bare_addresses(address: str) -> None:
    with pytest.raises(InvalidAddress):
        build(_make(recipient=address))
    with pytest.raises(InvalidAddress):
        build(_make(sender=address))


@pytest.mark.parametrize(
    "changes",
    [
        {"message_id": "not an id"},
        {"message_id": "<invitation-42@acme.example.com>"},
        {"list_id": "Acme Research surveys"},
        {"list_id": "Acme <no-dot>"},
        {"unsubscribe_url": "https://x.example.com/a b"},
        {"unsubscribe_url": "https://x.example.com/>, <mailto:evil@example.net"},
        {"unsubscribe_url": "https://x.example.com/" + "a" * 1000},
    ],
)
def test_malformed_message_id_list_id_or_url_is_refused(changes: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        build(_make(**changes))


@given(
    sender_name=header_text,
    recipient_name=header_text,
    subject=header_text,
    text=body_text,
    html=body_text,
)
def test_no_line_exceeds_998_octets_and_header_lines_fold_at_78(
    sender_name: str, recipient_name: str, subject: str, text: str, html: str
) -> None:
    data = build(
        _make(
            sender_name=sender_name,
            recipient_name=recipient_name,
            subject=subject,
            text=text,
            html=html,
        )
    )
    lines = data.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    # The unsubscribe URL is one word that cannot be folded; every other header line
    # and every quoted-printable body line fits.
    unfoldable = f"List-Unsubscribe: <{UNSUBSCRIBE_URL}>".encode()
    assert all(len(line) <= 78 for line in _header_lines(data) if line != unfoldable)
    assert max(len(line) for line in data.split(b"\r\n\r\n", 1)[1].split(b"\r\n")) <= 76


def test_bare_line_feeds_never_reach_the_wire() -> None:
    data = build(_make(text="a\nb\rc\r\nd", html="<p>\r</p>\n"))
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")


def test_empty_display_name_gives_a_bare_address() -> None:
    data = build(_make(recipient_name=""))
    assert b"\r\nTo: ann.smith@example.org\r\n" in data
