"""Address normalisation and the keyed address hash."""

from __future__ import annotations

import re

import email_validator
import pytest
from hypothesis import assume, given, reject
from hypothesis import strategies as st

from worker.addresses import address_hash, is_ascii_address, normalise, recipient_id
from worker.errors import InvalidAddress

KEY = b"test-address-hash-key"

# Pieces that cover both the fast path and email_validator's: atext and specials,
# dots, hyphens (including "--" and "xn--"), upper case, non-ASCII letters, reserved
# and numeric top-level domains.
_PIECES = st.sampled_from(
    [
        "a",
        "Z",
        "0",
        "9",
        ".",
        "-",
        "--",
        "_",
        "+",
        "'",
        "!",
        "=",
        "?",
        "~",
        "xn--",
        "é",
        "ß",
        "Ö",
        "中",
        " ",
        ",",
        '"',
        "(",
        "@",
    ]
)
_TLDS = st.sampled_from(
    ["com", "ORG", "de", "co.uk", "test", "local", "invalid", "onion", "arpa", "123", "x", "рф"]
)
address_like = st.builds(
    lambda local, domain, tld: f"{local}@{domain}.{tld}",
    st.lists(_PIECES, min_size=1, max_size=8).map("".join),
    st.lists(_PIECES, min_size=1, max_size=8).map("".join),
    _TLDS,
)
inputs = st.one_of(st.emails(), address_like, st.text(max_size=40))


def _normalise_or_none(raw: str) -> str | None:
    try:
        return normalise(raw)
    except InvalidAddress:
        return None


@given(inputs)
def test_normalisation_is_idempotent(raw: str) -> None:
    try:
        once = normalise(raw)
    except InvalidAddress:
        reject()
    assert normalise(once) == once


@given(st.one_of(st.emails(), address_like))
def test_fast_path_agrees_with_email_validator(raw: str) -> None:
    lowered = raw.lower().strip()
    try:
        valid = email_validator.validate_email(
            lowered, check_deliverability=False, allow_smtputf8=True
        )
    except email_validator.EmailNotValidError:
        expected = None
    else:
        expected = f"{valid.local_part}@{valid.ascii_domain}"
    assert _normalise_or_none(lowered) == expected


@given(
    st.emails(),
    st.lists(st.booleans(), min_size=1),
    st.sampled_from(["", " ", "  ", "\u00a0", "\u3000"]),
    st.sampled_from(["", " ", "\u2003"]),
)
def test_case_and_whitespace_variants_hash_equal(
    address: str, upper: list[bool], before: str, after: str
) -> None:
    assume(_normalise_or_none(address) is not None)
    variant = "".join(
        c.upper() if upper[i % len(upper)] else c.lower() for i, c in enumerate(address)
    )
    assert address_hash(KEY, normalise(before + variant + after)) == address_hash(
        KEY, normalise(address)
    )


@given(
    st.emails(),
    st.integers(min_value=0),
    st.sampled_from([chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]]),
)
def test_control_characters_are_rejected_without_echoing_the_address(
    address: str, position: int, control: str
) -> None:
    at = position % (len(address) + 1)
    raw = address[:at] + control + address[at:]
    with pytest.raises(InvalidAddress) as caught:
        normalise(raw)
    assert address not in caught.value.reason


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "ann", "ann@", "@example.com", "ann@@example.com", "ann@example", "a b@x.com"],
)
def test_malformed_addresses_are_rejected(raw: str) -> None:
    with pytest.raises(InvalidAddress):
        normalise(raw)


def test_reserved_domains_are_rejected() -> None:
    with pytest.raises(InvalidAddress):
        normalise("ann@example.test")


def test_reason_does_not_contain_the_address() -> None:
    with pytest.raises(InvalidAddress) as caught:
        normalise("ann,smith@example.com")
    assert "ann" not in caught.value.reason
    assert "example" not in caught.value.reason


def test_whole_address_is_lower_cased() -> None:
    assert normalise("  Ann.Smith@Example.COM ") == "ann.smith@example.com"


def test_internationalised_domain_is_returned_in_ascii() -> None:
    assert normalise("Jörg@Bücher.DE") == "jörg@xn--bcher-kva.de"


def test_decomposed_input_is_nfc_normalised() -> None:
    assert normalise("jo\u0308rg@example.com") == "j\u00f6rg@example.com"


def test_is_ascii_address_tells_when_smtputf8_is_needed() -> None:
    assert is_ascii_address(normalise("ann@bücher.de"))
    assert not is_ascii_address(normalise("jörg@example.com"))


@given(st.emails())
def test_hash_differs_per_key(address: str) -> None:
    assume(_normalise_or_none(address) is not None)
    normalised = normalise(address)
    assert address_hash(b"key-one", normalised) != address_hash(b"key-two", normalised)


def test_hash_is_32_bytes_and_differs_per_address() -> None:
    first = address_hash(KEY, "ann@example.com")
    assert len(first) == 32
    assert first != address_hash(KEY, "bob@example.com")


def test_recipient_id_is_the_first_16_hex_digits_of_the_hash() -> None:
    email_hash = address_hash(KEY, "ann@example.com")
    rid = recipient_id(email_hash)
    assert re.fullmatch(r"[0-9a-f]{16}", rid)
    assert email_hash.hex().startswith(rid)
