"""Opt-out exports against CSV injection: no cell a spreadsheet would run as a formula."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.privacy import FORMULA_START, spreadsheet_safe

# Text that often starts with what a spreadsheet reads as a formula.
cells = st.one_of(
    st.text(),
    st.builds(lambda first, rest: first + rest, st.sampled_from(FORMULA_START), st.text()),
)


@given(cells)
def test_no_cell_starts_a_formula(cell: str) -> None:
    assert not spreadsheet_safe(cell).startswith(FORMULA_START)


@given(cells)
def test_a_cell_changes_only_by_one_leading_quote_and_only_when_it_must(cell: str) -> None:
    safe = spreadsheet_safe(cell)
    if cell.startswith(FORMULA_START):
        assert safe == "'" + cell
    else:
        assert safe == cell


@given(st.lists(cells, min_size=1, max_size=4))
def test_a_written_row_reads_back_as_safe_cells(row: list[str]) -> None:
    out = io.StringIO()
    csv.writer(out).writerow([spreadsheet_safe(c) for c in row])
    (read,) = csv.reader(io.StringIO(out.getvalue(), newline=""))
    assert read == [spreadsheet_safe(c) for c in row]
    assert not any(c.startswith(FORMULA_START) for c in read)


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("=cmd@example.com", "'=cmd@example.com"),
        ('=HYPERLINK("https://evil.example","x")', '\'=HYPERLINK("https://evil.example","x")'),
        ("+1-555@example.com", "'+1-555@example.com"),
        ("-2+3@example.com", "'-2+3@example.com"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("ann@example.com", "ann@example.com"),
        ("one-click", "one-click"),
        ("2026-01-02T03:04:05+00:00", "2026-01-02T03:04:05+00:00"),
        ("", ""),
    ],
)
def test_owasp_examples(cell: str, expected: str) -> None:
    assert spreadsheet_safe(cell) == expected
