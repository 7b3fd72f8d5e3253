"""The one rule of what a locale is."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from worker import locales


@given(st.text(max_size=6))
def test_a_locale_is_exactly_two_lower_case_ascii_letters(value: str) -> None:
    expected = len(value) == 2 and all(c in string.ascii_lowercase for c in value)
    assert locales.is_locale(value) is expected


@given(
    st.text(alphabet=string.ascii_letters, min_size=2, max_size=2), st.sampled_from(["", " ", "\t"])
)
def test_what_people_write_is_read_whatever_the_case_and_spacing(letters: str, pad: str) -> None:
    assert locales.parse(f"{pad}{letters}{pad}") == letters.lower()


def test_anything_else_is_not_a_locale_and_falls_back_to_english() -> None:
    for value in ("eng", "e", "", "n1", "pt-br", "é", "\uff45\uff4e"):
        assert locales.parse(value) is None
        assert locales.or_fallback(value) == "en"
    assert locales.or_fallback("nl") == "nl"
