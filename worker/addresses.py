"""E-mail address normalisation and the keyed hash that identifies an address.

An address is normalised once, on the way in (CSV import, CLI, opt-out), and from then
on only its normalised form and its keyed hash are compared: opt-out lists, tokens and
logs all work on `address_hash`, never on the address as typed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata

import email_validator

from worker.errors import InvalidAddress

# RFC 5321 section 4.5.3.1.3 (with RFC 3696 errata 1690): 254 octets at most. UTF-8 never
# has fewer octets than characters, so a longer string can be refused before parsing.
_MAX_LENGTH = 254

# C0 controls, DEL and C1 controls: never part of an address, and CR, LF or NUL could
# end up in a header or an SMTP command.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# The common case, lower-case ASCII `dot-atom@host.tld` (RFC 5322 section 3.2.3 atext,
# RFC 1123 section 2.1 host labels, an alphabetic TLD), for which email_validator's
# normalised form is the input itself. Anything else (IDN, Punycode and other "--"
# labels of RFC 5890 section 2.3.1, reserved domains) goes through email_validator,
# which costs about 20 µs an address; the fast path about 1 µs.
_ATEXT = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_COMMON = re.compile(
    rf"{_ATEXT}(?:\.{_ATEXT})*@(?:[a-z0-9](?:[a-z0-9-]{{0,61}}[a-z0-9])?\.)+[a-z]{{2,63}}"
)


def normalise(raw: str) -> str:
    """Return the canonical form of an e-mail address, or raise `InvalidAddress`.

    Surrounding whitespace is stripped, the address is NFC-normalised (RFC 6532 section
    3.1) and lower-cased as a whole: mailbox names are case-sensitive in theory, but
    treating `Ann@x` and `ann@x` as one person errs on the side of not mailing someone
    who opted out. The domain is returned in its ASCII (IDNA) form. The reason of the
    error never contains the address.
    """
    if _CONTROL.search(raw):
        raise InvalidAddress("contains a control character")
    address = unicodedata.normalize("NFC", raw.strip().lower())
    if not address:
        raise InvalidAddress("empty")
    if len(address) > _MAX_LENGTH:
        raise InvalidAddress("too long")
    if _COMMON.fullmatch(address):
        domain = address[address.index("@") + 1 :]
        if "--" not in domain and not _is_special_use(domain):
            return address
    try:
        valid = email_validator.validate_email(
            address, check_deliverability=False, allow_smtputf8=True
        )
    except email_validator.EmailNotValidError as e:
        # email_validator's message may quote characters of the address: keep it out.
        raise InvalidAddress("invalid syntax") from e
    return f"{valid.local_part}@{valid.ascii_domain}"


def _is_special_use(domain: str) -> bool:
    """Whether email_validator refuses `domain` as reserved (RFC 6761, RFC 7686)."""
    return any(
        domain == name or domain.endswith("." + name)
        for name in email_validator.SPECIAL_USE_DOMAIN_NAMES
    )


def is_ascii_address(address: str) -> bool:
    """Whether a normalised address can be sent without the SMTPUTF8 extension (RFC 6531)."""
    return address.isascii()


def address_hash(key: bytes, normalised: str) -> bytes:
    """The 32-byte HMAC-SHA256 of a normalised address under the server's hash key.

    Keyed, not a bare hash: a bare hash of an e-mail address is reversed by hashing a
    list of candidate addresses.
    """
    return hmac.digest(key, normalised.encode(), hashlib.sha256)


def recipient_id(email_hash: bytes) -> str:
    """The short identifier of a recipient in logs: the first 16 hex digits of its hash."""
    return email_hash[:8].hex()
