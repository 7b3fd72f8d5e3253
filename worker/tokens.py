"""Unsubscribe tokens: opaque, URL-safe, HMAC-SHA256 signed, never expiring.

A token says "the person whose keyed address hash is H leaves list S" (S is a client's
survey list, the firm's marketing list, or both: marketing mail that carries a client's
name and sender is left on that client's list as well as the marketing list), so it keeps
working after retention purged the invitation it was sent with and never carries the clear
address (DESIGN.md §3).

Binary layout, 66 bytes, base64url without padding (88 characters):

    version (1) | key id (4) | scope flag (1) | client id (8, big-endian)
    | email hash (32) | locale (2, ASCII) | MAC (18)

The MAC is the first 18 bytes of HMAC-SHA256 over the 48 bytes before it. 66 is a
multiple of 3, so every base64 character carries six bits of the token: changing any
character changes the bytes, and with them the MAC check.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from worker import locales

_VERSION = 1
_BODY = struct.Struct(">B4sBQ32s2s")
_MAC_LENGTH = 18
_TOKEN = re.compile(r"[A-Za-z0-9_-]{88}")
_KEY_ID_LABEL = b"survey-worker unsubscribe key id"
_SCOPE_MARKETING = 0
_SCOPE_CLIENT = 1
_SCOPE_CLIENT_MARKETING = 2
_MAX_CLIENT_ID = 2**64 - 1


@dataclass(frozen=True)
class TokenClaims:
    """What an unsubscribe token asserts: who leaves which list, and the page's language."""

    client_id: int | None  # None = the firm's marketing list only
    email_hash: bytes
    locale: str
    # With a client: marketing mail sent in that client's name, so both lists.
    marketing: bool = False

    @property
    def lists_marketing(self) -> bool:
        """Whether the person leaves the firm's marketing list."""
        return self.client_id is None or self.marketing


@functools.lru_cache(maxsize=64)
def key_id(key: bytes) -> bytes:
    """The 4-byte identifier of a signing key: an HMAC under the key, so it reveals nothing."""
    return hmac.digest(key, _KEY_ID_LABEL, hashlib.sha256)[:4]


def sign(key: bytes, claims: TokenClaims) -> str:
    """Return the unsubscribe token for `claims`, signed with `key`.

    Raises `ValueError` when the claims cannot be encoded: a client id outside
    0..2**64-1, an email hash that is not 32 bytes, a locale that is not two lower-case
    ASCII letters.
    """
    if claims.client_id is not None and not 0 <= claims.client_id <= _MAX_CLIENT_ID:
        raise ValueError("client_id does not fit in 64 unsigned bits")
    if len(claims.email_hash) != 32:
        raise ValueError("email_hash must be 32 bytes")
    if not locales.is_locale(claims.locale):
        raise ValueError("locale must be two lower-case ASCII letters")
    if claims.client_id is None:
        scope, client_id = _SCOPE_MARKETING, 0
    elif claims.marketing:
        scope, client_id = _SCOPE_CLIENT_MARKETING, claims.client_id
    else:
        scope, client_id = _SCOPE_CLIENT, claims.client_id
    body = _BODY.pack(
        _VERSION, key_id(key), scope, client_id, claims.email_hash, claims.locale.encode()
    )
    mac = hmac.digest(key, body, hashlib.sha256)[:_MAC_LENGTH]
    return base64.urlsafe_b64encode(body + mac).decode()


def verify(keys: Sequence[bytes], token: str) -> TokenClaims | None:
    """Return the claims of a genuine token, or None.

    `keys` are the signing keys, newest first (key rotation: a token verifies as long as
    the key that signed it is listed). Every problem (not base64url, wrong length,
    unknown version or key, bad MAC) gives None, so a caller cannot learn which check
    failed; the MAC is compared in constant time.
    """
    # 88 characters of the base64url alphabet always decode, to exactly 66 bytes.
    if not _TOKEN.fullmatch(token):
        return None
    data = base64.urlsafe_b64decode(token)
    body, mac = data[: _BODY.size], data[_BODY.size :]
    version, kid, scope, client_id, email_hash, locale = _BODY.unpack(body)
    if version != _VERSION:
        return None
    key = next((k for k in keys if key_id(k) == kid), None)
    if key is None:
        return None
    if not hmac.compare_digest(mac, hmac.digest(key, body, hashlib.sha256)[:_MAC_LENGTH]):
        return None
    # A genuine MAC means `sign` wrote the fields; checking them anyway keeps `verify`
    # total should a key holder ever sign something else.
    locale_text = locale.decode("ascii", "replace")
    if not locales.is_locale(locale_text):
        return None
    if scope in (_SCOPE_CLIENT, _SCOPE_CLIENT_MARKETING):
        return TokenClaims(
            client_id=client_id,
            email_hash=email_hash,
            locale=locale_text,
            marketing=scope == _SCOPE_CLIENT_MARKETING,
        )
    if scope == _SCOPE_MARKETING and client_id == 0:
        return TokenClaims(client_id=None, email_hash=email_hash, locale=locale_text)
    return None
