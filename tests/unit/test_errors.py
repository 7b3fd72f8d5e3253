"""A launch problem speaks the language of whoever asked: flags on the command line,
fields in the API."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.errors import LaunchProblem


@pytest.mark.parametrize(
    ("cli", "api"),
    [
        (
            "--reminders needs --reminder-interval, e.g. 3d",
            "reminders needs reminder_interval, e.g. 3d",
        ),
        ("--reminder-interval needs --reminders N", "reminder_interval needs reminders N"),
        ("--survey-url must use https", "survey_url must use https"),
        (
            "give --survey-url, or a survey_url column in the file",
            "give survey_url, or a survey_url column in the file",
        ),
    ],
)
def test_the_api_names_fields_where_the_command_line_names_flags(cli: str, api: str) -> None:
    problem = LaunchProblem(cli)
    assert (str(problem), problem.api_message()) == (cli, api)


def test_dashes_inside_words_and_values_stay() -> None:
    text = "line 3: a-b--c is not an address; ---- is no flag"
    assert LaunchProblem(text).api_message() == text


@given(st.text())
def test_a_message_without_a_flag_is_unchanged(text: str) -> None:
    clean = text.replace("--", "")
    assert LaunchProblem(clean).api_message() == clean
