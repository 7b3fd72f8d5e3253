"""The Feedback-ID header (Gmail's feedback loop): `CAMPAIGN_ID:CLIENT:KIND:FIRM`, each
field made safe, read back with the stdlib email parser; and the FIRM_NAME setting."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
from email.message import EmailMessage

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_message import BASE
from worker import render
from worker.message import build, feedback_id, feedback_id_field
from worker.settings import Settings

FIELD = re.compile(r"[a-z0-9._-]{1,64}")
# Text with what a header or a Feedback-ID must never carry, mixed with ordinary text.
HOSTILE = st.text(
    st.one_of(
        st.characters(),
        st.sampled_from([":", "\r", "\n", "\x00", "\u2028", " ", "-", "É", "ß", "ﬁ", "市"]),
    ),
    max_size=200,
)


def parsed(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


@given(HOSTILE)
def test_a_field_is_short_safe_ascii_and_never_empty(value: str) -> None:
    field = feedback_id_field(value)
    assert FIELD.fullmatch(field)
    assert not field.startswith("-") and not field.endswith("-")


@given(HOSTILE)
def test_making_a_field_safe_twice_changes_nothing(value: str) -> None:
    field = feedback_id_field(value)
    assert feedback_id_field(field) == field


@given(st.from_regex(r"[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?", fullmatch=True))
def test_a_field_that_is_already_safe_stays_as_it_is(value: str) -> None:
    assert feedback_id_field(value) == value


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("Survey Research", "survey-research"),
        ("Études Dupont & Fils", "etudes-dupont-fils"),
        ("acme", "acme"),
        ("ACME:eu/2", "acme-eu-2"),
        (" --Research\r\nLtd.-- ", "research-ltd."),
        ("x" * 100, "x" * 64),
    ],
)
def test_names_become_slugs(value: str, field: str) -> None:
    assert feedback_id_field(value) == field


def test_a_name_with_no_latin_letter_becomes_a_hash_that_keeps_names_apart() -> None:
    first, second = feedback_id_field("市场研究"), feedback_id_field("调研公司")
    assert re.fullmatch(r"x[0-9a-f]{12}", first)
    assert first != second
    assert feedback_id_field("市场研究") == first


@given(st.integers(1, 2**63 - 1), HOSTILE, st.sampled_from(["survey", "marketing"]), HOSTILE)
def test_the_header_a_mail_client_reads_has_the_four_safe_fields(
    campaign_id: int, client: str, kind: str, firm: str
) -> None:
    value = feedback_id(campaign_id, client, kind, firm)
    message = parsed(build(dataclasses.replace(BASE, feedback_id=value)))

    assert message.get_all("Feedback-ID") == [value]
    assert str(message["Feedback-ID"]).split(":") == [
        str(campaign_id),
        feedback_id_field(client),
        kind,
        feedback_id_field(firm),
    ]
    assert message.defects == []


def test_the_feedback_id_of_a_default_message() -> None:
    assert feedback_id(7, "acme", "survey", "Survey Research") == "7:acme:survey:survey-research"


@pytest.mark.parametrize(
    "value", ["7:acme:survey:x\r\nBcc: eve@example.com", "7:acme:survey:Survey Research", ""]
)
def test_a_feedback_id_that_feedback_id_did_not_make_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="feedback_id"):
        build(dataclasses.replace(BASE, feedback_id=value))


def test_without_a_feedback_id_there_is_no_such_header() -> None:
    assert "Feedback-ID" not in parsed(build(BASE))


def test_firm_name_defaults_to_what_a_template_store_shows() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.firm_name == render.DEFAULT_FIRM_NAME


def test_firm_name_is_read_from_the_environment_and_tidied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FIRM_NAME", "  Études\t Dupont  ")
    assert Settings(_env_file=None).firm_name == "Études Dupont"  # type: ignore[call-arg]


@pytest.mark.parametrize("value", ["", "   ", "Acme\x01Research"])
def test_a_blank_firm_name_or_one_with_a_control_character_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="firm_name"):
        Settings(_env_file=None, firm_name=value)  # type: ignore[call-arg]
