"""What an SMTP reply means for an invitation: pure functions over reply codes and text."""

from __future__ import annotations

import re
from typing import Literal

# What an SMTP reply code makes of a message (an invitation state, see worker/states.py).
ReplyClass = Literal["sent", "deferred", "failed", "unknown"]

# RFC 3463 enhanced status code "class.subject.detail", which RFC 2034 §4 puts at the start
# of each reply line. The look-arounds keep "5.1.1" out of e.g. an IP address "10.5.1.1".
_ENHANCED_STATUS = re.compile(r"(?<![\d.])[245]\.\d{1,3}\.\d{1,3}(?![\d.])")

# RFC 3463 §3.2: bad destination mailbox address (5.1.1), bad destination system address
# (5.1.2); RFC 7505's 5.1.10 is a null MX, a domain that declares it accepts no mail.
_BAD_DESTINATION = frozenset({"5.1.1", "5.1.2", "5.1.10"})

# "Other undefined status" says nothing specific, so the reply text decides.
_UNSPECIFIED_STATUS = "5.0.0"

# RFC 5321 §4.2.2: 550 mailbox unavailable, 551 user not local, 553 mailbox name not allowed.
_MAILBOX_CODES = frozenset({550, 551, 553})

_MAILBOX = r"(?:user|mailbox|recipient|account)"
_NO_SUCH_MAILBOX = re.compile(
    rf"\b(?:{_MAILBOX}\s+(?:is\s+)?unknown"
    rf"|unknown\s+{_MAILBOX}"
    rf"|no\s+such\s+{_MAILBOX}"
    rf"|{_MAILBOX}\s+(?:does\s+not|doesn't)\s+exist"
    rf"|{_MAILBOX}\s+not\s+found)\b",
    re.IGNORECASE,
)


def classify_reply(code: int) -> ReplyClass:
    """The outcome of a final SMTP reply code (RFC 5321 §4.2.1).

    2xx means the server took responsibility for the message (`sent`), 4xx is a transient
    refusal (`deferred`), 5xx a permanent one (`failed`). Anything else, which a compliant
    server never sends as a final reply, leaves the message's fate `unknown`.
    """
    if 200 <= code < 300:
        return "sent"
    if 400 <= code < 500:
        return "deferred"
    if 500 <= code < 600:
        return "failed"
    return "unknown"


def is_hard_bounce(code: int, message: str) -> bool:
    """Whether a refusal proves the address cannot receive mail, so it joins the bounce list.

    Only a 5xx reply can. If it carries an RFC 3463 enhanced status code, that code decides:
    5.1.1, 5.1.2 and 5.1.10 (bad destination mailbox or host) are hard bounces, while
    anything else — notably 5.7.x policy or content rejections — is not. Without one (or
    with the unspecific 5.0.0), a 550, 551 or 553 whose text plainly says the user or
    mailbox does not exist is a hard bounce. `message` is the server's reply text.
    """
    if not 500 <= code < 600:
        return False
    status = _ENHANCED_STATUS.search(message)
    if status is not None and status.group() != _UNSPECIFIED_STATUS:
        return status.group() in _BAD_DESTINATION
    return code in _MAILBOX_CODES and _NO_SUCH_MAILBOX.search(message) is not None


def enhanced_status(text: str | None) -> str | None:
    """The RFC 3463 enhanced status code at the start of a reply's text (`4.7.1`), if any."""
    if not text:
        return None
    found = _ENHANCED_STATUS.match(text.strip())
    return found.group() if found else None
