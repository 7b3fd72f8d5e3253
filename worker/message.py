"""Assembly of an outgoing invitation as RFC 5322 / MIME bytes, ready for SMTP DATA.

Built by hand rather than with `email.message.EmailMessage`, which costs about 0.7 ms a
message; this takes a few tens of microseconds. The shape is fixed: a
multipart/alternative (RFC 2046 section 5.1.4) of a text/plain and a text/html part,
both UTF-8 in quoted-printable, with the list headers of RFC 2369, 2919 and 8058.

Every header value is checked: a character no header can carry (see
`UNSAFE_IN_HEADER`) raises `UnsafeHeaderValue`, addresses must be bare addr-specs, and
display names and the subject are quoted or encoded so that no value can add a header or
a recipient. The `Feedback-ID` (Gmail's feedback loop) is made of fields `feedback_id_field`
made safe.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from worker.errors import InvalidAddress, UnsafeHeaderValue

# RFC 5322 section 2.1.1: lines SHOULD be at most 78 characters, MUST be at most 998.
_SOFT_LIMIT = 78
_HARD_LIMIT = 998

# RFC 2047 section 2: an encoded-word is at most 75 characters; "=?utf-8?b?" and "?="
# take 12 of them.
_WORD_LIMIT = 75
_WORD_OVERHEAD = len("=?utf-8?b??=")

# What no header may carry, even RFC 2047-encoded: CR, LF and NUL, which would end the
# header or the message, and every other C0 control but tab, DEL, the C1 controls (NEL is
# one) and U+2028/U+2029, which software reading the decoded text takes for line breaks.
# FIRM_NAME's default: who "we" are in a message and its Feedback-ID when no firm is named.
DEFAULT_FIRM_NAME = "Survey Research"
UNSAFE_IN_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
# RFC 5322 section 3.2.3 atext, the characters a phrase may show without quoting.
_ATEXT = "a-zA-Z0-9!#$%&'*+/=?^_`{|}~-"
_ATOMS = re.compile(rf"[{_ATEXT}]+(?: [{_ATEXT}]+)*")
# Printable ASCII that needs no encoded-word; "=?" is left out because parsers decode
# anything that looks like an encoded-word, even inside a quoted-string.
_PLAIN = re.compile(r"(?:(?!=\?)[\x20-\x7e])*")
# An addr-spec without quoting, comments or brackets (RFC 5322 section 3.4.1; UTF-8 is
# allowed by RFC 6532): nothing in it can end the address or start another, and it has
# no control character or Unicode line separator that some software reads as a break.
_ADDR_CHAR = r"[^\x00-\x20\x7f-\x9f\u2028\u2029\"(),:;<>@\[\\\]]"
_ADDRESS = re.compile(rf"{_ADDR_CHAR}+@{_ADDR_CHAR}+")
# A Message-ID `message_id_for` made (the id without leading zeros, at most 19 digits).
_OUR_MESSAGE_ID = re.compile(
    r"invitation-(?P<id>[1-9][0-9]{0,18})@(?P<domain>[A-Za-z0-9.-]{1,253})"
)
# RFC 5322 section 3.6.4 msg-id and RFC 2919 section 2 list-id: dot-atom-text pieces.
_DOT_ATOM = rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*"
_MSG_ID = re.compile(rf"{_DOT_ATOM}@{_DOT_ATOM}")
_LIST_ID = re.compile(rf"(.*?) *<({_DOT_ATOM}\.{_DOT_ATOM})>")
# A Feedback-ID's fields (see `feedback_id`): what `feedback_id_field` leaves, at most 64
# characters, and at most four fields joined by ":".
_FEEDBACK_FIELD_LIMIT = 64
_NOT_FEEDBACK_FIELD = re.compile(r"[^a-z0-9._-]+")
_FEEDBACK_ID = re.compile(r"[a-z0-9._-]{1,64}(?::[a-z0-9._-]{1,64}){0,3}")
# RFC 3986 characters, which never include space, quotes or angle brackets.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")


@dataclass(frozen=True)
class OutgoingMessage:
    """Everything that goes into one message; `build` turns it into bytes."""

    sender: str
    sender_name: str
    recipient: str
    recipient_name: str
    subject: str
    text: str
    html: str
    message_id: str  # without angle brackets
    date: datetime
    list_id: str  # e.g. "Acme Research surveys <client-7.surveys.example.com>"
    unsubscribe_url: str
    # Sent through Postmark: repeat the Message-ID as metadata, which its webhooks return.
    postmark_metadata: bool = False
    # The Feedback-ID header's value, as `feedback_id` makes it; None: no such header.
    feedback_id: str | None = None


def message_id_for(invitation_id: int, domain: str) -> str:
    """The Message-ID (without angle brackets) of an invitation: the same on every attempt."""
    return f"invitation-{invitation_id}@{domain}"


@functools.lru_cache(maxsize=256)
def feedback_id_field(value: str) -> str:
    """`value` made fit for a field of a Feedback-ID: never empty, at most 64 characters
    from lower-case ASCII letters, digits, ".", "_" and "-", so never a ":" (the field
    separator), a space or anything a header cannot carry.

    Letters lose their accents and case ("Études Dupont & Fils" gives
    "etudes-dupont-fils"), every other run of characters becomes one "-", and a "-" does
    not start or end it. A value with nothing left (a name in another script, say) becomes
    "x" and twelve hex digits of its SHA-256, so that such names stay apart. A field
    already made safe comes back unchanged.
    """
    ascii_only = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    slug = _NOT_FEEDBACK_FIELD.sub("-", ascii_only.lower())[:_FEEDBACK_FIELD_LIMIT].strip("-")
    if slug:
        return slug
    return "x" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def feedback_id(campaign_id: int, client: str, kind: str, firm: str) -> str:
    """The Feedback-ID header's value, `CAMPAIGN_ID:CLIENT:KIND:FIRM`: the fields Gmail's
    feedback loop reports complaint rates by (Postmaster Tools), the firm, which sends, as
    the last one. Each field is made safe by `feedback_id_field`."""
    fields = (str(campaign_id), client, kind, firm)
    return ":".join(feedback_id_field(f) for f in fields)


def invitation_of_message_id(message_id: str) -> tuple[int, str] | None:
    """The invitation id and domain a Message-ID of `message_id_for` names, or None; angle
    brackets and surrounding spaces are allowed, the domain comes back in lower case."""
    match = _OUR_MESSAGE_ID.fullmatch(message_id.strip().removeprefix("<").removesuffix(">"))
    if match is None or int(match["id"]) >= 2**63:
        return None
    return int(match["id"]), match["domain"].lower()


def build(msg: OutgoingMessage) -> bytes:
    """Return the message as bytes with CRLF line endings, ready for SMTP DATA.

    Raises `UnsafeHeaderValue` when a header value holds a character of
    `UNSAFE_IN_HEADER` (the error names the field, not the value), `InvalidAddress` when
    the sender or recipient is not a bare address, and `ValueError` for a malformed
    message id, list id, URL or a naive date.
    """
    _check(msg)
    text = _qp(msg.text)
    html = _qp(msg.html)
    # "=_" never occurs in quoted-printable, where "=" always starts "=XX" or a soft line
    # break (RFC 2045 section 6.7), so the boundary cannot occur in either body (RFC
    # 2046 section 5.1.1); the hash only makes it unique and repeatable.
    boundary = "=_" + hashlib.sha256(msg.message_id.encode()).hexdigest()[:32]
    part_headers = "charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    return b"".join(
        (
            "\r\n".join(_headers(msg, boundary)).encode(),
            f"\r\n\r\n--{boundary}\r\nContent-Type: text/plain; {part_headers}".encode(),
            text,
            f"\r\n--{boundary}\r\nContent-Type: text/html; {part_headers}".encode(),
            html,
            f"\r\n--{boundary}--\r\n".encode(),
        )
    )


def _check(msg: OutgoingMessage) -> None:
    """Refuse what no header may carry and the values that are not what they claim to be
    (the errors `build` names)."""
    for field in (
        "sender",
        "sender_name",
        "recipient",
        "recipient_name",
        "subject",
        "message_id",
        "list_id",
        "unsubscribe_url",
    ):
        if UNSAFE_IN_HEADER.search(getattr(msg, field)):
            raise UnsafeHeaderValue(f"{field} holds a character no header can carry")
    if msg.date.tzinfo is None:
        raise ValueError("date must be timezone-aware")
    if not _MSG_ID.fullmatch(msg.message_id):
        raise ValueError("message_id is not an RFC 5322 msg-id")
    if not _URL.fullmatch(msg.unsubscribe_url):
        raise ValueError("unsubscribe_url is not a URL")
    if msg.feedback_id is not None and not _FEEDBACK_ID.fullmatch(msg.feedback_id):
        raise ValueError("feedback_id is not a Feedback-ID of `feedback_id`")


def _headers(msg: OutgoingMessage, boundary: str) -> list[str]:
    """The message's header lines (folded), the multipart one naming `boundary`."""
    headers = [
        _date_header(msg.date),
        _from_header(msg.sender_name, msg.sender),
        _mailbox("To", msg.recipient_name, _address("recipient", msg.recipient)),
        _fold("Subject", _unstructured(msg.subject, len("Subject:"))),
        _fold("Message-ID", [f" <{msg.message_id}>"]),
        _list_id_header(msg.list_id),
        # RFC 2369 section 3.2, and RFC 8058 section 3.1 for one-click unsubscription.
        _fold("List-Unsubscribe", [f" <{msg.unsubscribe_url}>"]),
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        "MIME-Version: 1.0",
        _fold("Content-Type", [" multipart/alternative;", f' boundary="{boundary}"']),
    ]
    if msg.feedback_id is not None:
        headers.append(f"Feedback-ID: {msg.feedback_id}")
    if msg.postmark_metadata:
        headers.append(_fold("X-PM-Metadata-message-id", [f" {msg.message_id}"]))
    return headers


# The headers below are the same for many messages: a chunk shares its Date, a campaign
# its From and List-Id.
@functools.lru_cache(maxsize=4)
def _date_header(when: datetime) -> str:
    """The Date header (RFC 5322 section 3.3)."""
    return _fold("Date", [" " + format_datetime(when)])


@functools.lru_cache(maxsize=64)
def _from_header(display_name: str, address: str) -> str:
    """The From header."""
    return _mailbox("From", display_name, _address("sender", address))


@functools.lru_cache(maxsize=64)
def _list_id_header(list_id: str) -> str:
    """The List-Id header (RFC 2919)."""
    parts = _LIST_ID.fullmatch(list_id)
    if parts is None:
        raise ValueError('list_id must read "description <label.namespace>"')
    return _fold("List-Id", [*_phrase(parts[1], len("List-Id:")), f" <{parts[2]}>"])


def _qp(body: str) -> bytes:
    """A body as UTF-8 quoted-printable with CRLF line breaks and lines of at most 76.

    Quoted-printable encodes each line on its own (RFC 2045 section 6.7), and most lines
    of a campaign's messages are the same template text, so short lines come from a cache.
    """
    lines = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return b"\r\n".join(
        [_qp_cached(line) if len(line) <= _CACHED_LINE else _qp_line(line) for line in lines]
    )


def _qp_line(line: str) -> bytes:
    # b2a_qp puts "\n" between the pieces of a line too long for one; each of them becomes
    # the CRLF of a soft line break (RFC 2045 section 6.7, rule 5).
    return binascii.b2a_qp(line.encode(), istext=True).replace(b"\n", b"\r\n")


# A thousand lines of up to a thousand characters: a few megabytes at most. Longer lines
# (a minified template's single line, different for every recipient) are not kept.
_CACHED_LINE = 1000
_qp_cached = functools.lru_cache(maxsize=1000)(_qp_line)


def _address(field: str, address: str) -> str:
    """`address` itself, once it is known to be a bare addr-spec; UTF-8 needs SMTPUTF8."""
    if not _ADDRESS.fullmatch(address):
        raise InvalidAddress(f"{field} is not a bare e-mail address")
    return address


def _mailbox(name: str, display_name: str, address: str) -> str:
    """A From or To header: `display name <address>`, or the bare address."""
    if not display_name:
        return _fold(name, [" " + address])
    return _fold(name, [*_phrase(display_name, len(name) + 1), f" <{address}>"])


def _phrase(text: str, indent: int) -> list[str]:
    """The words of an RFC 5322 phrase showing `text`, each with its leading space.

    `indent` is the length of the header line before the phrase. Atoms stay as they
    are, other printable ASCII becomes a quoted-string, and anything else, or anything
    too long for the line, becomes RFC 2047 encoded-words.
    """
    if not text:
        return []
    if _PLAIN.fullmatch(text):
        if _ATOMS.fullmatch(text):
            if indent + 1 + len(text) <= _SOFT_LIMIT:
                return [" " + text]
        else:
            quoted = text.replace("\\", "\\\\").replace('"', '\\"')
            if indent + 3 + len(quoted) <= _SOFT_LIMIT:
                return [f' "{quoted}"']
    return _encoded_words(text, indent)


def _unstructured(text: str, indent: int) -> list[str]:
    """The words of an unstructured value (RFC 5322 section 3.2.5) such as a subject.

    `indent` is the length of the header line before the value. Printable ASCII is
    folded at its spaces; text that is not, that starts or ends with white space (which
    unfolding would lose), or whose words are too long for a line, becomes RFC 2047
    encoded-words.
    """
    if not text:
        return []
    if _PLAIN.fullmatch(text) and text[0] != " " and text[-1] != " ":
        if indent + 1 + len(text) <= _SOFT_LIMIT:
            return [" " + text]
        words = re.findall(r" +[^ ]+", " " + text)
        if indent + max(len(w) for w in words) <= _SOFT_LIMIT:
            return words
    return _encoded_words(text, indent)


def _encoded_words(text: str, indent: int) -> list[str]:
    """`text` as UTF-8 "B" encoded-words (RFC 2047 sections 4.1 and 5), each with a space.

    The first word fits on the line after `indent` characters, the others on a line of
    their own. Words split only between characters (section 5, rule 3); the white space
    between adjacent encoded-words is not part of the text (section 6.2).
    """
    data = text.encode()
    words = []
    start = 0
    room = _SOFT_LIMIT - indent - 1
    while start < len(data):
        # Base64 turns each 3 octets into 4 characters.
        end = start + (min(room, _WORD_LIMIT) - _WORD_OVERHEAD) // 4 * 3
        if end < len(data):
            # Back up to the first octet of a UTF-8 sequence.
            while data[end] & 0xC0 == 0x80:
                end -= 1
        encoded = base64.b64encode(data[start:end]).decode()
        words.append(f" =?utf-8?b?{encoded}?=")
        start = end
        room = _SOFT_LIMIT - 1
    return words


def _fold(name: str, words: list[str]) -> str:
    """Header `name` with `words` (each starting with white space), folded at 78.

    Folding puts CRLF before a word's leading white space (RFC 5322 section 3.2.2), so
    unfolding gives the value back. A single word longer than the line stays whole.
    """
    lines = []
    line = name + ":"
    for word in words:
        if len(line) + len(word) > _SOFT_LIMIT and line != name + ":":
            lines.append(line)
            line = word
        else:
            line += word
    lines.append(line)
    # A UTF-8 character takes at most four octets, so only a long line can be too long.
    if any(len(li) > _HARD_LIMIT // 4 and len(li.encode()) > _HARD_LIMIT for li in lines):
        raise ValueError(f"{name} header has a line longer than {_HARD_LIMIT} octets")
    return "\r\n".join(lines)
