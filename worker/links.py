"""Per-recipient links: the survey link and the unsubscribe link."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import re
import unicodedata
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from worker.errors import InvalidUrl

MAX_URL_LENGTH = 2000
# RFC 3986 section 2: the ASCII characters a URL may show; anything else must be %-escaped.
_ASCII_URL = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Dot-separated labels of letters (any script: IDNs), digits, "-" and "_"; or IPv4.
_HOST = re.compile(r"[\w-]+(?:\.[\w-]+)*\.?")
# Unicode categories never part of a link: controls, format characters (bidi overrides
# that reorder what a reader sees), separators (spaces, U+2028/2029), and private-use,
# surrogate or unassigned code points.
_NOT_IN_URL = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Cs", "Cn"})


def check_survey_url(url: str) -> str:
    """Return `url` if it may be a message's survey link, else raise `InvalidUrl`.

    Only an absolute http or https URL with a host passes: no other scheme (`javascript:`,
    `data:`), no relative or bare text, no space, control or line-separator character
    anywhere, no user name or password (`https://bank.example@evil.example/`), and no
    backslash, which browsers read as a slash.
    """
    if len(url) > MAX_URL_LENGTH:
        raise InvalidUrl(f"is longer than {MAX_URL_LENGTH} characters")
    if not _ASCII_URL.fullmatch(url):
        for char in url:
            if unicodedata.category(char) in _NOT_IN_URL:
                raise InvalidUrl("contains a space or control character")
            if char.isascii() and not _ASCII_URL.fullmatch(char):
                raise InvalidUrl(f"contains {char!r}, which a URL cannot hold")
    if _BAD_ESCAPE.search(url):
        raise InvalidUrl("has a % not followed by two hex digits")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as e:
        raise InvalidUrl("has a malformed host or port") from e
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidUrl("is not an http:// or https:// URL")
    if "@" in parts.netloc:
        raise InvalidUrl("must not hold a user name or password")
    host = parts.hostname
    if not host:
        raise InvalidUrl("has no host")
    # Without a user name, the host opens the authority: "[" starts an IPv6 literal.
    if parts.netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError as e:
            raise InvalidUrl("has a malformed host") from e
    elif not _HOST.fullmatch(host):
        raise InvalidUrl("has a malformed host")
    return url


def survey_ref(key: bytes, invitation_id: int) -> str:
    """An opaque reference to one invitation for the survey platform (not guessable)."""
    digest = hmac.digest(key, b"survey:%d" % invitation_id, hashlib.sha256)[:12]
    return base64.urlsafe_b64encode(digest).decode()


def survey_link(survey_url: str, ref: str) -> str:
    """`survey_url` with the recipient's reference added as the `r` query parameter."""
    head, fragment = _survey_parts(survey_url)
    return f"{head}r={ref}{fragment}"


@functools.lru_cache(maxsize=64)
def _survey_parts(survey_url: str) -> tuple[str, str]:
    # Split once per campaign, not once per recipient: what goes before `r=...` (the URL
    # with its query and a separator) and the fragment that follows.
    parts = urlsplit(survey_url)
    query = urlencode(parse_qsl(parts.query, keep_blank_values=True))
    head = urlunsplit(parts._replace(query=query, fragment=""))
    separator = "&" if query else "?"
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return head + separator, fragment


def unsubscribe_link(public_base_url: str, token: str) -> str:
    """The unsubscribe page for `token` under the web app's public base URL."""
    return f"{public_base_url.rstrip('/')}/unsubscribe/{token}"
