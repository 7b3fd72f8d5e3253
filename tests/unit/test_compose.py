"""Composing one invitation's message with the repository's templates and real tokens;
every message is read back with the stdlib email parser."""

from __future__ import annotations

import dataclasses
import email
import email.policy
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import links, tokens, verp
from worker.addresses import address_hash
from worker.compose import MAX_MESSAGE_BYTES, Composer, Prepared, prepare
from worker.message import UNSAFE_IN_HEADER, message_id_for
from worker.records import Campaign, Invitation, Outcome
from worker.render import TemplateStore

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
SIGNING_KEY = b"test-unsubscribe-signing-key"
HASH_KEY = b"test-address-hash-key"
COMPOSER = Composer(
    templates=TemplateStore(TEMPLATES),
    signing_key=SIGNING_KEY,
    hash_key=HASH_KEY,
    public_base_url="https://unsubscribe.example.com",
)
NOW = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
SURVEY = Campaign(
    id=7,
    client_id="acme",
    client_token_id=3,
    client_name="Acme Research",
    sender_email="surveys@acme.example.com",
    name="Spring survey",
    kind="survey",
    template="invitation",
    locale="en",
    survey_url="https://survey.example.com/s/spring",
    status="running",
)
MARKETING = dataclasses.replace(SURVEY, kind="marketing", template="marketing")
ANN = Invitation(
    id=42,
    email="Ann.Smith@Example.org",
    email_hash=address_hash(HASH_KEY, "ann.smith@example.org"),
    locale=None,
    vars={"first_name": "Ann", "last_name": "Smith"},
    attempts=0,
)

# A value of a name column: a CSV cell, or anything a platform put in the JSON.
name_column = st.one_of(st.none(), st.integers(), st.text(max_size=60))


def _prepare(campaign: Campaign = SURVEY, **changes: Any) -> Prepared | Outcome:
    return prepare(COMPOSER, campaign, dataclasses.replace(ANN, **changes), NOW)


def _prepared(campaign: Campaign = SURVEY, **changes: Any) -> Prepared:
    result = _prepare(campaign, **changes)
    assert isinstance(result, Prepared), result
    return result


def _parse(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _bodies(data: bytes) -> list[str]:
    """The text and the HTML body, decoded."""
    return [str(part.get_content()) for part in _parse(data).iter_parts()]


def _display_name(data: bytes, field: str) -> str:
    """The display name of a From or To header, decoded as RFC 2047 section 6.2 says
    (with `email.header`: CPython before gh-128110 keeps the white space between
    adjacent encoded-words, which the RFC says to ignore)."""
    raw = email.message_from_bytes(data)[field].replace("\r\n", "")
    name, _ = parseaddr(raw)
    return str(make_header(decode_header(name)))


def _unsubscribe_claims(data: bytes) -> tokens.TokenClaims | None:
    url = _parse(data)["List-Unsubscribe"].strip("<>")
    prefix, _, token = url.rpartition("/")
    assert prefix == "https://unsubscribe.example.com/unsubscribe"
    return tokens.verify([SIGNING_KEY], token)


def test_the_message_reads_back_with_the_invitation_s_message_id() -> None:
    prepared = _prepared()
    parsed = _parse(prepared.data)
    assert prepared.invitation == ANN
    assert prepared.recipient == "ann.smith@example.org"
    assert prepared.message_id == message_id_for(ANN.id, "acme.example.com")
    assert parsed["Message-ID"] == f"<{prepared.message_id}>"
    assert [a.addr_spec for a in parsed["To"].addresses] == ["ann.smith@example.org"]
    assert [a.addr_spec for a in parsed["From"].addresses] == ["surveys@acme.example.com"]
    assert parsed["From"].addresses[0].display_name == "Acme Research"
    assert parsed["Subject"] == "Acme Research would value your opinion"
    assert parsed["Date"].datetime == NOW
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert not parsed.defects
    assert len(prepared.data) <= MAX_MESSAGE_BYTES


def test_the_same_inputs_give_the_same_bytes() -> None:
    assert _prepare() == _prepare()


@pytest.mark.parametrize(
    ("campaign", "list_id"),
    [
        (SURVEY, "Acme Research surveys <acme.surveys.acme.example.com>"),
        (MARKETING, "Acme Research marketing <marketing.acme.example.com>"),
    ],
)
def test_the_list_id_is_the_client_s_surveys_or_marketing(campaign: Campaign, list_id: str) -> None:
    assert _parse(_prepared(campaign).data)["List-Id"] == list_id


@pytest.mark.parametrize(("campaign", "marketing"), [(SURVEY, False), (MARKETING, True)])
def test_the_unsubscribe_token_leaves_that_list_and_is_shown_in_both_bodies(
    campaign: Campaign, marketing: bool
) -> None:
    data = _prepared(campaign).data
    claims = _unsubscribe_claims(data)
    # Both carry the client's name: the link always leaves the client's list.
    assert claims == tokens.TokenClaims(
        client_id=3, email_hash=ANN.email_hash, locale="en", marketing=marketing
    )
    url = _parse(data)["List-Unsubscribe"].strip("<>")
    assert all(url in body for body in _bodies(data))


@pytest.mark.parametrize(
    ("recipient_locale", "campaign_locale", "token_locale"),
    [
        (None, "en", "en"),
        (None, "fr", "fr"),
        ("NL", "en", "nl"),
        ("nl-BE", "en", "en"),
        ("pt_BR", "fr", "en"),
        ("deu", "en", "en"),
    ],
)
def test_the_token_carries_a_two_letter_locale_or_en(
    recipient_locale: str | None, campaign_locale: str, token_locale: str
) -> None:
    campaign = dataclasses.replace(SURVEY, locale=campaign_locale)
    claims = _unsubscribe_claims(_prepared(campaign, locale=recipient_locale).data)
    assert claims is not None
    assert claims.locale == token_locale


def test_the_campaign_survey_link_carries_the_recipient_s_reference() -> None:
    link = links.survey_link(SURVEY.survey_url, links.survey_ref(HASH_KEY, ANN.id))
    assert all(link in body for body in _bodies(_prepared().data))


def test_a_recipient_s_own_survey_url_wins_over_the_campaign_s() -> None:
    own = "https://panel.example.net/take/ann-7f3a"
    bodies = _bodies(_prepared(vars={**ANN.vars, "survey_url": own}).data)
    assert all(own in body for body in bodies)
    assert not any(SURVEY.survey_url in body for body in bodies)


@pytest.mark.parametrize(
    ("columns", "name"),
    [
        ({"name": "Dr. Ann Smith", "first_name": "Ann", "last_name": "Smith"}, "Dr. Ann Smith"),
        ({"first_name": "Ann", "last_name": "Smith"}, "Ann Smith"),
        ({"first_name": "Ann"}, "Ann"),
        ({"last_name": "Smith"}, "Smith"),
        ({"first_name": "", "last_name": "Smith"}, "Smith"),
        ({"name": 7, "first_name": "Ann", "last_name": "Smith"}, "Ann Smith"),
        ({"first_name": 12, "last_name": "Smith"}, "Smith"),
        ({"first_name": "Zoë", "last_name": 'Müller, "Jr."'}, 'Zoë Müller, "Jr."'),
        ({}, ""),
    ],
)
def test_the_recipient_name_is_the_name_column_else_first_and_last_name(
    columns: dict[str, Any], name: str
) -> None:
    data = _prepared(vars=columns).data
    assert _display_name(data, "To") == name
    assert [a.addr_spec for a in _parse(data)["To"].addresses] == ["ann.smith@example.org"]


@given(name=name_column, first_name=name_column, last_name=name_column)
def test_any_name_columns_give_that_display_name_or_fail_this_invitation_alone(
    name: object, first_name: object, last_name: object
) -> None:
    given_columns = {"name": name, "first_name": first_name, "last_name": last_name}
    columns = {k: v for k, v in given_columns.items() if v is not None}
    if isinstance(name, str):
        expected = name
    else:
        expected = " ".join(p for p in (first_name, last_name) if isinstance(p, str) and p)
    result = _prepare(vars=columns)
    if UNSAFE_IN_HEADER.search(expected):
        assert result == Outcome(ANN.id, "failed", reason="unsafe_header_value")
        return
    assert isinstance(result, Prepared)
    assert _display_name(result.data, "To") == expected
    assert [a.addr_spec for a in _parse(result.data)["To"].addresses] == [result.recipient]


@pytest.mark.parametrize(
    "columns",
    [
        {"name": "Ann\r\nBcc: evil@example.net"},
        {"first_name": "Ann\n", "last_name": "Smith"},
        {"first_name": "Ann", "last_name": "Smith\x00"},
        {"name": "Ann\u2028Smith"},
    ],
)
def test_a_name_no_header_can_carry_fails_this_invitation_alone(
    columns: dict[str, Any],
) -> None:
    assert _prepare(vars=columns) == Outcome(ANN.id, "failed", reason="unsafe_header_value")


def test_an_erased_address_fails_without_a_message() -> None:
    assert _prepare(email=None) == Outcome(ANN.id, "failed", reason="address_erased")


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("ann smith@example.org", "invalid syntax"),
        ("ann@example.org\r\nBcc: evil@example.net", "contains a control character"),
        ("   ", "empty"),
    ],
)
def test_an_invalid_address_fails_with_the_reason(address: str, reason: str) -> None:
    assert _prepare(email=address) == Outcome(ANN.id, "failed", reason=f"invalid_address: {reason}")


@pytest.mark.parametrize(
    ("size", "too_large"), [(MAX_MESSAGE_BYTES // 4, False), (MAX_MESSAGE_BYTES // 2, True)]
)
def test_a_message_over_the_size_limit_fails_as_too_large(size: int, too_large: bool) -> None:
    # The first name is shown in both bodies; the `name` column keeps it out of To.
    result = _prepare(vars={"name": "Ann Smith", "first_name": "x" * size})
    if too_large:
        assert result == Outcome(ANN.id, "failed", reason="message_too_large")
    else:
        assert isinstance(result, Prepared)
        assert MAX_MESSAGE_BYTES // 2 < len(result.data) <= MAX_MESSAGE_BYTES


def test_the_envelope_sender_is_the_client_s_address_or_a_verp_address() -> None:
    assert _prepared().envelope_sender == "surveys@acme.example.com"
    composer = dataclasses.replace(COMPOSER, bounce_domain="bounces.example.net")
    prepared = prepare(composer, SURVEY, ANN, NOW)
    assert isinstance(prepared, Prepared)
    assert verp.invitation_of([SIGNING_KEY], prepared.envelope_sender, "bounces.example.net") == 42
    # The From header still names the client.
    assert _parse(prepared.data)["From"].addresses[0].addr_spec == "surveys@acme.example.com"


def test_a_reminder_says_so_and_links_to_the_first_message_s_survey_answer() -> None:
    first = _prepared()
    reminder = _prepared(id=99, round=1, parent_id=ANN.id)
    assert _parse(reminder.data)["Subject"] == "Reminder: Acme Research would value your opinion"
    assert reminder.message_id == message_id_for(99, "acme.example.com") != first.message_id
    ref = links.survey_ref(HASH_KEY, ANN.id)
    assert all(ref in body for body in _bodies(reminder.data) + _bodies(first.data))


def test_through_postmark_the_message_id_is_repeated_as_metadata() -> None:
    assert "X-PM-Metadata-message-id" not in _parse(_prepared().data)
    composer = dataclasses.replace(COMPOSER, postmark_metadata=True)
    prepared = prepare(composer, SURVEY, ANN, NOW)
    assert isinstance(prepared, Prepared)
    assert _parse(prepared.data)["X-PM-Metadata-message-id"] == prepared.message_id
