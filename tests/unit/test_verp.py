"""VERP addresses: every id round-trips under every key, and nothing else verifies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import verp

DOMAIN = "bounces.example.com"
KEYS = st.binary(min_size=1, max_size=64)
IDS = st.integers(min_value=0, max_value=2**64 - 1)


@given(key=KEYS, invitation_id=IDS)
def test_an_address_names_its_invitation_in_any_case(key: bytes, invitation_id: int) -> None:
    address = verp.address(key, invitation_id, DOMAIN)
    local = address.partition("@")[0]
    assert address.endswith("@" + DOMAIN)
    assert len(local) <= 64
    assert verp.invitation_of([key], address, DOMAIN) == invitation_id
    assert verp.invitation_of([key], address.upper(), DOMAIN.upper()) == invitation_id


@given(key=KEYS, other=KEYS, invitation_id=IDS)
def test_rotation_verifies_with_any_listed_key_and_no_other(
    key: bytes, other: bytes, invitation_id: int
) -> None:
    address = verp.address(key, invitation_id, DOMAIN)
    assert verp.invitation_of([other, key], address, DOMAIN) == invitation_id
    if other != key:
        assert verp.invitation_of([other], address, DOMAIN) is None


@given(
    key=KEYS,
    invitation_id=IDS,
    position=st.integers(min_value=2, max_value=37),
    replacement=st.sampled_from("0123456789abcdef"),
)
def test_changing_any_character_of_the_token_breaks_it(
    key: bytes, invitation_id: int, position: int, replacement: str
) -> None:
    address = verp.address(key, invitation_id, DOMAIN)
    forged = address[:position] + replacement + address[position + 1 :]
    named = verp.invitation_of([key], forged, DOMAIN)
    assert named is None or forged == address


@given(key=KEYS, text=st.text(max_size=120))
def test_anything_else_names_nothing_and_never_raises(key: bytes, text: str) -> None:
    assert verp.invitation_of([key], text, DOMAIN) is None


def test_another_domain_or_prefix_is_not_ours() -> None:
    address = verp.address(b"key", 42, DOMAIN)
    assert verp.invitation_of([b"key"], address.replace(DOMAIN, "example.com"), DOMAIN) is None
    assert verp.invitation_of([b"key"], "x" + address[1:], DOMAIN) is None
    assert verp.invitation_of([b"key"], address.partition("@")[0], DOMAIN) is None


def test_an_id_beyond_64_bits_is_refused() -> None:
    with pytest.raises(ValueError):
        verp.address(b"key", 2**64, DOMAIN)
