"""Classify a message received on the bounce address: a bounce, a complaint, or neither.

`classify` is a pure function from the bytes of one inbound message to a `Verdict`. The
first of these checks that applies decides:

1. A delivery status notification, RFC 3464 (a `multipart/report`, RFC 6522, with
   `report-type=delivery-status`). Each per-recipient block (RFC 3464 section 2.3) is read
   from its `Action` and its RFC 3463 `Status` (`Diagnostic-Code` stands in for a status
   that cannot be read, and for an X.0.0 "other undefined status": Exim writes
   `Status: 5.0.0` with the real code in the diagnostic, see `specific_status`): `failed`
   with 5.x.x is hard, except 5.7.x (security or policy, the sender's problem), which is
   policy; 4.x.x or `delayed` is soft (Postfix's final bounce after its queue lifetime says
   `failed` with 4.x.x); `delivered`, `relayed` and `expanded` are ignored. The most severe
   block wins: hard > policy > soft > ignore.
2. An abuse report, RFC 5965 (`report-type=feedback-report`), is a complaint whatever its
   Feedback-Type, except `not-spam` (RFC 6430: the opposite of a complaint) and
   `auth-failure` (RFC 6591: our own DKIM/SPF failed, which says nothing of the recipient),
   which are ignored.
3. Any other bounce is read by flufl.bounce's detectors: permanent failures are hard
   (policy when the bounce's text gives a 5.7.x status), temporary ones soft. The addresses
   they find are not trusted, and not returned.
4. An automatic reply, RFC 3834 (`Auto-Submitted` other than `no`, the common non-standard
   markers, an out-of-office subject), is ignored. DSNs carry `Auto-Submitted` too, which is
   why the reports are read first.
5. Anything else is ignored as unrecognised, and bytes that hold no message at all as
   malformed. `classify` never raises.

`original_message_id` is the Message-ID of our message that the report is about, read from
the returned message or its headers (the report's third part, RFC 6522 section 3), from a
non-standard bounce's attached or inline copy, or from a DSN's `X-Original-Message-ID`
field (Gmail's). Only the first 256 KiB of a message are read: the machine-readable parts
and the returned message's headers come long before that.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.errors import MessageError
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.policy import compat32
from email.utils import collapse_rfc2231_value, getaddresses
from itertools import chain
from typing import Literal

from flufl.bounce import all_failures

VerdictKind = Literal["hard", "soft", "policy", "complaint", "ignore"]


@dataclass(frozen=True)
class Verdict:
    """What one message received on the bounce address says about a message we sent.

    `status` is the RFC 3463 status found (e.g. "5.1.1"), `original_message_id` the
    Message-ID of our message without angle brackets, each None when the report has none.
    `reason` says how the verdict was reached: "dsn", "arf", "detector", "auto_reply",
    "unrecognised" or "malformed".
    """

    kind: VerdictKind
    status: str | None
    original_message_id: str | None
    reason: str


# What is read of a message (the parser costs ~10 us a line or MIME part), of one text part,
# and of all text parts given to the detectors (whose heuristics scan every line, some once
# per pattern: 17 detectors, ~60 passes).
_READ_LIMIT = 256 << 10
_TEXT_LIMIT = 64 << 10
_DETECTOR_TEXT_BUDGET = 128 << 10
_DETECTOR_LINE_BUDGET = 2000
# Fields flufl.bounce's detectors call str methods on, which compat32 gives as a Header
# when they hold raw non-ASCII bytes.
_DETECTOR_FIELDS = ("from", "x-mailer", "content-description", "action")
# The most MIME parts looked at: a bounce has a handful.
_MAX_PARTS = 100
# RFC 5322 section 2.1.1: a line is at most 998 characters.
_MAX_ID = 998

_DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_DSN_REPORTS = frozenset({"delivery-status", "global-delivery-status"})
_ARF_TYPE = "message/feedback-report"
_ARF_REPORT = "feedback-report"
# Where a report returns our message or its headers (RFC 6522, RFC 6533 message/global*);
# text/rfc822 is not registered but is sent.
_RETURNED_TYPES = frozenset(
    {
        "message/rfc822",
        "text/rfc822",
        "message/rfc822-headers",
        "text/rfc822-headers",
        "message/global",
        "message/global-headers",
    }
)
_NOT_COMPLAINTS = frozenset({"not-spam", "auth-failure"})

_SEVERITY: dict[VerdictKind, int] = {"ignore": 0, "soft": 1, "policy": 2, "hard": 3}

# RFC 3463 section 2: class.subject.detail, class 2, 4 or 5, one to three digits each; not
# part of a longer dotted number such as an IP address.
_STATUS = re.compile(r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
# What can be salvaged of a bogus Status field ("5", "5.7", "5.X.X", "550"): the class, and
# the subject when it is a number.
_PARTIAL_STATUS = re.compile(r"\s*([245])(?:\.(\d{1,3})(?!\d))?")
# The SMTP reply code that opens a Diagnostic-Code ("smtp; 550 ..."), RFC 3464 section 2.3.6.
_DIAGNOSTIC_REPLY = re.compile(r"\s*[\w-]*\s*;\s*([245])\d\d(?!\d)")
_BLANK_LINE = re.compile(rb"\r?\n[ \t]*\r?\n")
_COMMENT = re.compile(r"\([^()]*\)")
# The line after which a non-standard bounce copies the returned message (Exim, qmail,
# Yahoo, sendmail).
_INLINE_COPY = re.compile(
    r"^[ \t]*-{2,}[ \t]*(?:this is a copy of|below this line is a copy of|original message)"
    r"[^\n]*\n",
    re.IGNORECASE | re.MULTILINE,
)
# Subjects of out-of-office replies from systems that set no RFC 3834 header.
_AUTO_REPLY_SUBJECT = re.compile(
    r"\b(?:auto(?:matic)?[ _-]?(?:reply|response|answer)|out[ -]of[ -](?:the[ -])?office"
    r"|automatische antwort|abwesenheitsnotiz|r[ée]ponse automatique|respuesta autom[áa]tica"
    r"|risposta automatica|automatisch antwoord|resposta autom[áa]tica)\b|^\s*auto:",
    re.IGNORECASE,
)


def classify(raw: bytes) -> Verdict:
    """Classify one message received on the bounce address (see the module docstring).

    Total: any bytes give a verdict, "malformed" when they hold no message at all.
    """
    msg = _parse(raw)
    if msg is None:
        return Verdict("ignore", None, None, "malformed")
    report_type = _report_type(msg)
    if report_type is not None:
        parts = _subparts(msg)
        types = {p.get_content_type() for p in parts}
        if report_type == _ARF_REPORT or (report_type not in _DSN_REPORTS and _ARF_TYPE in types):
            return _arf_verdict(parts)
        verdict = _dsn_verdict(parts)
        if verdict is not None:
            return verdict
    verdict = _detector_verdict(msg)
    if verdict is not None:
        return verdict
    if _is_auto_reply(msg):
        return Verdict("ignore", None, None, "auto_reply")
    return Verdict("ignore", None, None, "unrecognised")


def _parse(raw: bytes) -> Message | None:
    """The message in the first `_READ_LIMIT` bytes, or None when they hold no header."""
    try:
        msg = BytesParser(policy=compat32).parsebytes(raw[:_READ_LIMIT])
    except RecursionError:
        # The parser recurses once per nested multipart.
        return None
    return msg if msg.keys() else None


def _report_type(msg: Message) -> str | None:
    """The report-type of a multipart/report (RFC 6522 section 3), else None."""
    if msg.get_content_type() != "multipart/report" or not msg.is_multipart():
        return None
    value = msg.get_param("report-type", "")
    if isinstance(value, tuple):
        value = collapse_rfc2231_value(value)
    return value.strip().lower()


# --- delivery status notifications (RFC 3464) -------------------------------------------


def _dsn_verdict(parts: list[Message]) -> Verdict | None:
    """The most severe per-recipient verdict of a DSN's parts, or None when no block says."""
    blocks = [b for p in parts if p.get_content_type() in _DSN_TYPES for b in _field_blocks(p)]
    best: tuple[VerdictKind, str | None] | None = None
    for block in blocks:
        found = _recipient_verdict(block)
        if found is not None and (best is None or _SEVERITY[found[0]] > _SEVERITY[best[0]]):
            best = found
            if found[0] == "hard":
                break
    if best is None:
        return None
    message_id = _returned_message_id(parts) or _first_id(
        _header(b, "x-original-message-id") for b in blocks
    )
    return Verdict(best[0], best[1], message_id, "dsn")


def _recipient_verdict(block: Message) -> tuple[VerdictKind, str | None] | None:
    """The verdict and status of one per-recipient block, or None when it says nothing."""
    # RFC 3464 section 2.3.3; MTAs add comments ("failed (bad address)"), opensmtpd says
    # "error" for "failed".
    action = _token(_header(block, "action"))
    klass, subject, status = _status(block)
    if action in ("delivered", "relayed", "expanded"):
        return "ignore", status
    if action == "delayed":
        return "soft", status
    failed = action.startswith("fail") or action == "error"
    if klass == 5:
        return ("policy" if subject == 7 else "hard"), status
    if klass == 4:
        return "soft", status
    if klass == 2:
        # A failure with a success status contradicts itself: not enough to give up on the
        # address.
        return ("soft" if failed else "ignore"), status
    # "failed" without a readable status: RFC 3464 says the MTA gave up on the recipient.
    return ("hard", None) if failed else None


def specific_status(statuses: Iterable[str]) -> str | None:
    """The status that says what happened, of RFC 3463 statuses in the order found.

    The first, normalised ("5.01.001" is "5.1.1"), unless it is X.0.0, "other undefined
    status" (RFC 3463 section 3.1), which says nothing but the class: then the first later
    status of the same class that says more. Exim writes `Status: 5.0.0` and puts the real
    code in the Diagnostic-Code (`550 5.7.1 ... blocked using Spamhaus`); SendGrid's
    `status` is 5.0.0 beside a `reason` that says 5.7.1. None when there is no status.
    """
    first: tuple[int, int, int] | None = None
    for status in statuses:
        klass, subject, detail = (int(g) for g in status.split("."))
        if first is None:
            first = klass, subject, detail
            if (subject, detail) != (0, 0):
                break
        elif klass == first[0] and (subject, detail) != (0, 0):
            first = klass, subject, detail
            break
    return None if first is None else "{}.{}.{}".format(*first)


def _status(block: Message) -> tuple[int | None, int | None, str | None]:
    """Class, subject and normalised RFC 3463 status of a block; what is known of each."""
    field = _header(block, "status")
    diagnostic = _header(block, "diagnostic-code")
    found = _STATUS.search(field)
    later = 0
    if found is None:
        partial = _PARTIAL_STATUS.match(field)
        klass = int(partial[1]) if partial else None
        # A bogus Status: the diagnostic's status, when it agrees on the class.
        found = _STATUS.search(diagnostic)
        if found is None or (klass is not None and int(found[1]) != klass):
            if klass is None and (reply := _DIAGNOSTIC_REPLY.match(diagnostic)):
                klass = int(reply[1])
            subject = int(partial[2]) if partial and partial[2] else None
            return klass, subject, None
        later = found.end()
    # An X.0.0 status defers to a later one in the diagnostic (`specific_status`).
    diagnosed = (m.group() for m in _STATUS.finditer(diagnostic, later))
    status = specific_status(chain([found.group()], diagnosed)) or found.group()
    klass, subject, _ = (int(g) for g in status.split("."))
    return klass, subject, status


def _field_blocks(part: Message) -> list[Message]:
    """The header blocks of a delivery-status or feedback-report part, in order."""
    if not part.is_multipart():
        return _parse_blocks(_leaf_bytes(part))
    blocks: list[Message] = []
    for item in _subparts(part):
        blocks.append(item)
        # The parser reads message/global-delivery-status as one message: its first block
        # as the headers, the others as the body.
        if not item.is_multipart():
            blocks.extend(_parse_blocks(_leaf_bytes(item)))
    return blocks


def _parse_blocks(data: bytes) -> list[Message]:
    """Blocks of header fields separated by blank lines (RFC 3464 section 2.1)."""
    parser = BytesHeaderParser(policy=compat32)
    blocks = (parser.parsebytes(c.lstrip(b"\r\n")) for c in _BLANK_LINE.split(data))
    return [b for b in blocks if b.keys()]


# --- complaints (RFC 5965) ---------------------------------------------------------------


def _arf_verdict(parts: list[Message]) -> Verdict:
    """A complaint, unless its Feedback-Type says it is none (module docstring)."""
    feedback_type = next(
        (
            _token(_header(b, "feedback-type"))
            for p in parts
            if p.get_content_type() == _ARF_TYPE
            for b in _field_blocks(p)
            if _header(b, "feedback-type")
        ),
        "",
    )
    kind: VerdictKind = "ignore" if feedback_type in _NOT_COMPLAINTS else "complaint"
    return Verdict(kind, None, _returned_message_id(parts), "arf")


# --- non-standard bounces (flufl.bounce) -------------------------------------------------


def _detector_verdict(msg: Message) -> Verdict | None:
    """flufl.bounce's reading of a bounce that follows no standard, or None."""
    texts = [_text(p) for p in _walk(msg) if _is_leaf(p, "text/plain")]
    returned = (p for p in _walk(msg) if p.get_content_type() in _RETURNED_TYPES)
    message_id = _first_id(_returned_id(p) for p in returned) or _inline_copy_id(texts)
    _prepare_for_detectors(msg)
    try:
        temporary, permanent = all_failures(msg)
    except Exception:
        # The detectors are heuristics over bytes from anyone, and all_failures re-raises
        # whatever breaks one (after logging it): a bounce they cannot read is no bounce.
        return None
    if not (temporary or permanent):
        return None
    found = _text_status(texts, 5 if permanent else 4)
    kind: VerdictKind = "hard" if permanent else "soft"
    if found is not None and found.startswith("5.7."):
        kind = "policy"
    return Verdict(kind, found, message_id, "detector")


def _prepare_for_detectors(msg: Message) -> None:
    """Cut `msg` (ours, parsed for this call) to what the detectors need, in a form they
    read without raising.

    At most `_MAX_PARTS` parts, and `_DETECTOR_TEXT_BUDGET` characters and
    `_DETECTOR_LINE_BUDGET` lines of text, the earliest parts first (a bounce explains
    itself before it returns the message); each text part decoded, other leaves emptied.
    """
    budget, lines = _DETECTOR_TEXT_BUDGET, _DETECTOR_LINE_BUDGET
    seen = 0
    stack = [msg]
    while stack:
        part = stack.pop()
        seen += 1
        for name in _DETECTOR_FIELDS:
            value = part.get(name)
            if value is not None and not isinstance(value, str):
                part.replace_header(name, str(value))
        if part.is_multipart():
            kept = _subparts(part)[: max(_MAX_PARTS - seen - len(stack), 0)]
            part.set_payload([*kept])
            stack.extend(reversed(kept))
            continue
        text = ""
        if part.get_content_maintype() == "text":
            text = "".join(_text(part)[:budget].splitlines(keepends=True)[:lines])
            # Without lone surrogates, which get_payload() would decode again.
            text = text.encode("utf-8", "replace").decode("utf-8")
            budget -= len(text)
            lines -= text.count("\n")
        del part["content-transfer-encoding"]
        part.set_payload(text)
    # Yale's detector takes the first From address, and raises when there is none.
    if not getaddresses([_header(msg, "from")]):
        del msg["from"]
        msg["From"] = "<>"


def _text_status(texts: Iterable[str], klass: int) -> str | None:
    """The first RFC 3463 status of class `klass` in a bounce's own text (a later one when
    it is X.0.0, see `specific_status`)."""
    found = (
        m.group()
        for text in texts
        for m in _STATUS.finditer(text, 0, _end_of_own_text(text))
        if int(m[1]) == klass
    )
    return specific_status(found)


def _end_of_own_text(text: str) -> int:
    """Where the copy of the returned message starts in a bounce's text, else its end."""
    copy = _INLINE_COPY.search(text)
    return copy.start() if copy else len(text)


def _inline_copy_id(texts: Iterable[str]) -> str | None:
    """The Message-ID of the message a plain-text bounce copies after its marker line."""
    for text in texts:
        copy = _INLINE_COPY.search(text)
        if copy is not None:
            headers = text[copy.end() :].lstrip("\r\n").encode("utf-8", "replace")
            return _message_id(BytesHeaderParser(policy=compat32).parsebytes(headers))
    return None


# --- automatic replies (RFC 3834) --------------------------------------------------------


def _is_auto_reply(msg: Message) -> bool:
    """Whether `msg` says it was sent automatically (RFC 3834 section 5, common markers)."""
    submitted = _token(_header(msg, "auto-submitted"))
    if submitted and submitted != "no":
        return True
    for name in ("x-autoreply", "x-autorespond"):
        if _token(_header(msg, name)) not in ("", "no", "false", "0"):
            return True
    if _token(_header(msg, "x-autogenerated")) == "reply":
        return True
    if any(_token(_header(msg, n)) == "auto_reply" for n in ("precedence", "x-precedence")):
        return True
    # X-Auto-Response-Suppress says nothing: Outlook puts it on ordinary mail.
    return _AUTO_REPLY_SUBJECT.search(_decoded(_header(msg, "subject"))) is not None


# --- helpers -----------------------------------------------------------------------------


def _walk(msg: Message) -> Iterator[Message]:
    """`msg` and its parts, depth first, not into returned messages; at most `_MAX_PARTS`."""
    stack = [msg]
    for _ in range(_MAX_PARTS):
        if not stack:
            return
        part = stack.pop()
        yield part
        if part.get_content_type() not in _RETURNED_TYPES:
            stack.extend(reversed(_subparts(part)))


def _subparts(part: Message) -> list[Message]:
    """The parts of a multipart, or the message of a message/rfc822; [] for a leaf."""
    payload = part.get_payload() if part.is_multipart() else None
    return [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []


def _is_leaf(part: Message, content_type: str) -> bool:
    return not part.is_multipart() and part.get_content_type() == content_type


def _returned_message_id(parts: Iterable[Message]) -> str | None:
    """The Message-ID of the first returned message or headers among a report's parts."""
    return _first_id(_returned_id(p) for p in parts if p.get_content_type() in _RETURNED_TYPES)


def _returned_id(part: Message) -> str | None:
    """The Message-ID of a message/rfc822 (or headers) part's message."""
    if part.is_multipart():
        inner = _subparts(part)
        return _message_id(inner[0]) if inner else None
    headers = BytesHeaderParser(policy=compat32).parsebytes(_leaf_bytes(part).lstrip(b"\r\n"))
    return _message_id(headers)


def _message_id(headers: Message) -> str | None:
    return _clean_id(_header(headers, "message-id"))


def _first_id(values: Iterable[str | None]) -> str | None:
    return next((v for v in map(_clean_id, values) if v), None)


def _clean_id(value: str | None) -> str | None:
    """A Message-ID without angle brackets; None unless 1-998 printable ASCII characters."""
    if value is None:
        return None
    found = value.strip().removeprefix("<").removesuffix(">").strip()
    if not 0 < len(found) <= _MAX_ID or not all("!" <= c <= "~" for c in found):
        return None
    return found


def _header(msg: Message, name: str) -> str:
    """A header field's value as text ("" when absent); compat32 gives non-ASCII as Header."""
    value = msg.get(name)
    return "" if value is None else str(value)


def _token(value: str) -> str:
    """The first word of a field, lowercased, without comments or parameters."""
    words = _COMMENT.sub(" ", value).split(";", 1)[0].split()
    return words[0].lower() if words else ""


def _decoded(value: str) -> str:
    """A header value with its RFC 2047 encoded words decoded, as far as they decode."""
    try:
        return str(make_header(decode_header(value)))
    except (MessageError, LookupError, ValueError):
        return value


def _text(part: Message) -> str:
    """The first `_TEXT_LIMIT` bytes of a text part, decoded with its charset."""
    data = _leaf_bytes(part)
    charset = part.get_param("charset", "utf-8")
    if isinstance(charset, tuple):
        charset = collapse_rfc2231_value(charset)
    try:
        return data.decode(charset, "replace")
    except (LookupError, ValueError):
        # Unknown, or not a text encoding ("base64"), or refusing "replace" ("idna").
        return data.decode("utf-8", "replace")


def _leaf_bytes(part: Message) -> bytes:
    """The first `_TEXT_LIMIT` bytes of a leaf part's body, its transfer encoding undone.

    Decoding all of it costs little: the message was cut to `_READ_LIMIT`. (Without
    `decode`, get_payload decodes raw 8-bit text with the declared charset, and raises
    when that is not a codec name.)
    """
    data = None if part.is_multipart() else part.get_payload(decode=True)
    return data[:_TEXT_LIMIT] if isinstance(data, bytes) else b""
