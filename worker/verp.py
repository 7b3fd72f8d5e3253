"""VERP addresses: the envelope sender that names the invitation a bounce is about.

With BOUNCE_DOMAIN set, each message goes out with `MAIL FROM:<b-TOKEN@BOUNCE_DOMAIN>`
(Variable Envelope Return Path), so a bounce or complaint sent back to it names the
invitation without trusting anything the report says. The `From:` header is unchanged.

TOKEN is 18 bytes in lower-case hexadecimal (36 characters): the invitation id (8 bytes,
big-endian) and the first 10 bytes of an HMAC-SHA256 over it, under a key derived from
each unsubscribe signing key (newest signs, all verify: rotation as for unsubscribe
links). Hexadecimal because mail systems may change the case of a local part, and it is
the cheapest to make (every message gets one); short, because some cap local parts at 64
characters.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import struct
from collections.abc import Sequence

PREFIX = "b-"
_ID = struct.Struct(">Q")
_MAC_LENGTH = 10
_TOKEN = re.compile(r"[0-9a-f]{36}")
_KEY_LABEL = b"survey-worker VERP key"


@functools.lru_cache(maxsize=16)
def _key(signing_key: bytes) -> bytes:
    """The VERP key derived from an unsubscribe signing key: a token is no use as a link."""
    return hmac.digest(signing_key, _KEY_LABEL, hashlib.sha256)


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.digest(_key(key), body, hashlib.sha256)[:_MAC_LENGTH]


def address(signing_key: bytes, invitation_id: int, domain: str) -> str:
    """The envelope sender for `invitation_id`: `b-TOKEN@domain`.

    Raises ValueError when the id does not fit in 64 unsigned bits.
    """
    if not 0 <= invitation_id < 2**64:
        raise ValueError("invitation_id does not fit in 64 unsigned bits")
    body = _ID.pack(invitation_id)
    return f"{PREFIX}{(body + _mac(signing_key, body)).hex()}@{domain}"


def at_domain(addr: str, domain: str) -> bool:
    """Whether `addr` is an address at `domain` (case-insensitive)."""
    return addr.strip().lower().rpartition("@")[2] == domain.lower()


def invitation_of(keys: Sequence[bytes], addr: str, domain: str) -> int | None:
    """The invitation id a genuine VERP address at `domain` names, or None.

    Case-insensitive; every problem (another domain, not a token, a MAC no key made) gives
    None, and the MAC is compared in constant time.
    """
    local, at, _ = addr.strip().lower().rpartition("@")
    if not at or not at_domain(addr, domain) or not local.startswith(PREFIX):
        return None
    token = local[len(PREFIX) :]
    if not _TOKEN.fullmatch(token):
        return None
    data = bytes.fromhex(token)
    body, mac = data[: _ID.size], data[_ID.size :]
    if not any(hmac.compare_digest(mac, _mac(k, body)) for k in keys):
        return None
    invitation_id: int = _ID.unpack(body)[0]
    return invitation_id
