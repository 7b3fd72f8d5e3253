"""Per-recipient links: the survey link and the unsubscribe link."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def survey_ref(key: bytes, invitation_id: int) -> str:
    """An opaque reference to one invitation for the survey platform (not guessable)."""
    digest = hmac.new(key, b"survey:%d" % invitation_id, hashlib.sha256).digest()[:12]
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
