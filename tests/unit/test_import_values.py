"""What the recipients import lets into a value, and campaign names from file names."""

from __future__ import annotations

import csv
import io

from hypothesis import given
from hypothesis import strategies as st

from worker import campaigns, imports

# Line breaks a header cannot carry that the CSV reader does not split on: NEL (a C1
# control), LINE SEPARATOR, PARAGRAPH SEPARATOR.
SEPARATORS = st.sampled_from(["\x85", "\u2028", "\u2029"])
TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")),
    max_size=20,
)


def one_row(first_name: str) -> imports.Row | imports.Rejected:
    text = io.StringIO()
    csv.writer(text).writerows([["email", "first_name"], ["ann@example.com", first_name]])
    _, rows = imports.read_recipients(io.BytesIO(text.getvalue().encode()), hash_key=b"k")
    (item,) = rows
    return item


@given(TEXT, SEPARATORS, TEXT)
def test_a_value_with_nel_or_a_unicode_line_separator_is_rejected(
    before: str, separator: str, after: str
) -> None:
    kept = one_row(before + after)
    assert isinstance(kept, imports.Row) and kept.vars == {"first_name": before + after}
    item = one_row(before + separator + after)
    assert item == imports.Rejected(2, "a value contains a line break or control character")


@given(
    st.text(alphabet=st.characters(exclude_characters="."), min_size=1, max_size=400),
    st.sampled_from(["", ".csv", ".txt"]),
)
def test_a_file_name_becomes_a_campaign_name_of_at_most_200_characters(
    stem: str, extension: str
) -> None:
    filename = stem + extension
    name = campaigns.name_of_file(filename)
    assert len(name) <= campaigns.MAX_CAMPAIGN_NAME
    if len(filename) <= campaigns.MAX_CAMPAIGN_NAME:
        assert name == filename
    else:
        assert filename.startswith(name[: -len(extension) - 1])
        assert name.endswith("…" + extension)
