"""Unsubscribe tokens: signing, verification, tampering and key rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import string
import struct
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.addresses import address_hash
from worker.tokens import TokenClaims, key_id, sign, verify

OLD_KEY = b"old-unsubscribe-signing-key"
NEW_KEY = b"new-unsubscribe-signing-key"
ADDRESS = "ann.smith@example.com"
EMAIL_HASH = address_hash(b"test-address-hash-key", ADDRESS)
CLAIMS = TokenClaims(client_id=7, email_hash=EMAIL_HASH, locale="en")
TOKEN = sign(NEW_KEY, CLAIMS)
ALPHABET = string.ascii_letters + string.digits + "-_"

claims = st.builds(
    TokenClaims,
    client_id=st.integers(min_value=0, max_value=2**64 - 1),
    email_hash=st.binary(min_size=32, max_size=32),
    locale=st.text(alphabet=string.ascii_lowercase, min_size=2, max_size=2),
    marketing=st.booleans(),
) | st.builds(
    TokenClaims,
    client_id=st.none(),
    email_hash=st.binary(min_size=32, max_size=32),
    locale=st.text(alphabet=string.ascii_lowercase, min_size=2, max_size=2),
)


@given(claims)
def test_round_trip(original: TokenClaims) -> None:
    assert verify([NEW_KEY], sign(NEW_KEY, original)) == original


def test_marketing_and_client_zero_are_different_scopes() -> None:
    marketing = TokenClaims(client_id=None, email_hash=EMAIL_HASH, locale="de")
    client_zero = TokenClaims(client_id=0, email_hash=EMAIL_HASH, locale="de")
    assert verify([NEW_KEY], sign(NEW_KEY, marketing)) == marketing
    assert verify([NEW_KEY], sign(NEW_KEY, client_zero)) == client_zero


def test_a_client_s_marketing_mail_leaves_both_lists_and_differs_from_its_surveys() -> None:
    survey = TokenClaims(client_id=7, email_hash=EMAIL_HASH, locale="de")
    marketing = TokenClaims(client_id=7, email_hash=EMAIL_HASH, locale="de", marketing=True)
    assert sign(NEW_KEY, survey) != sign(NEW_KEY, marketing)
    verified = verify([NEW_KEY], sign(NEW_KEY, marketing))
    assert verified == marketing
    assert verified is not None and verified.lists_marketing and verified.client_id == 7
    assert not survey.lists_marketing


@given(st.data())
def test_flipping_any_byte_makes_verify_return_none(data: st.DataObject) -> None:
    raw = bytearray(base64.urlsafe_b64decode(TOKEN))
    position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[position] ^= data.draw(st.integers(min_value=1, max_value=255))
    tampered = base64.urlsafe_b64encode(bytes(raw)).decode()
    assert verify([NEW_KEY], tampered) is None


@given(st.data())
def test_changing_any_character_makes_verify_return_none(data: st.DataObject) -> None:
    position = data.draw(st.integers(min_value=0, max_value=len(TOKEN) - 1))
    replacement = data.draw(st.sampled_from(ALPHABET).filter(lambda c: c != TOKEN[position]))
    tampered = TOKEN[:position] + replacement + TOKEN[position + 1 :]
    assert verify([NEW_KEY], tampered) is None


@given(st.text(max_size=200))
def test_arbitrary_text_never_verifies_and_never_raises(text: str) -> None:
    assert verify([NEW_KEY], text) is None


@pytest.mark.parametrize(
    "token",
    [
        "",
        TOKEN[:-1],
        TOKEN + "A",
        TOKEN[:-2] + "==",
        TOKEN + "====",
        TOKEN.replace(TOKEN[10], "+"),
        TOKEN[:40] + "é" + TOKEN[41:],
    ],
)
def test_malformed_tokens_return_none(token: str) -> None:
    assert verify([NEW_KEY], token) is None


def test_unknown_key_returns_none() -> None:
    assert verify([OLD_KEY], TOKEN) is None


def test_rotation_old_key_verifies_while_listed_and_not_after_removal() -> None:
    old_token = sign(OLD_KEY, CLAIMS)
    assert verify([NEW_KEY, OLD_KEY], old_token) == CLAIMS
    assert verify([NEW_KEY], old_token) is None


def test_validly_signed_token_with_unknown_scope_returns_none() -> None:
    body = struct.pack(">B4sBQ32s2s", 1, key_id(NEW_KEY), 9, 7, EMAIL_HASH, b"en")
    mac = hmac.digest(NEW_KEY, body, hashlib.sha256)[:18]
    assert verify([NEW_KEY], base64.urlsafe_b64encode(body + mac).decode()) is None


def test_token_contains_neither_the_address_nor_the_hash_in_hex() -> None:
    lowered = TOKEN.lower()
    assert ADDRESS not in lowered
    assert EMAIL_HASH.hex() not in lowered
    assert EMAIL_HASH.hex()[:16] not in lowered


@given(claims)
def test_token_uses_the_url_safe_alphabet_only(original: TokenClaims) -> None:
    token = sign(NEW_KEY, original)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert urllib.parse.quote(token, safe="") == token
    assert len(token) == 88


def test_key_id_is_4_bytes_and_does_not_reveal_the_key() -> None:
    assert len(key_id(NEW_KEY)) == 4
    assert key_id(NEW_KEY) != key_id(OLD_KEY)
    assert key_id(NEW_KEY) not in NEW_KEY


@pytest.mark.parametrize(
    "bad",
    [
        TokenClaims(client_id=-1, email_hash=EMAIL_HASH, locale="en"),
        TokenClaims(client_id=2**64, email_hash=EMAIL_HASH, locale="en"),
        TokenClaims(client_id=7, email_hash=EMAIL_HASH[:31], locale="en"),
        TokenClaims(client_id=7, email_hash=EMAIL_HASH, locale="EN"),
        TokenClaims(client_id=7, email_hash=EMAIL_HASH, locale="eng"),
        TokenClaims(client_id=7, email_hash=EMAIL_HASH, locale="é1"),
    ],
)
def test_sign_refuses_claims_it_cannot_encode(bad: TokenClaims) -> None:
    with pytest.raises(ValueError):
        sign(NEW_KEY, bad)
