"""The API's pure parts: feed cursors, keys, JSON recipients as the import's CSV, the drop's
CSV cells."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import addresses, apikeys, feed, imports
from worker.web.api.uploads import recipients_csv

BIGINT = st.integers(min_value=0, max_value=2**63 - 1)


@given(BIGINT, BIGINT)
def test_a_cursor_round_trips(xid: int, event_id: int) -> None:
    cursor = feed.Cursor(xid, event_id)
    assert feed.parse_cursor(str(cursor)) == cursor


@given(st.text(max_size=40))
def test_parse_cursor_accepts_only_what_it_hands_out(text: str) -> None:
    try:
        cursor = feed.parse_cursor(text)
    except feed.BadCursor:
        return
    assert 0 <= cursor.xid < 2**63 and 0 <= cursor.event_id < 2**63
    assert feed.parse_cursor(str(cursor)) == cursor


@pytest.mark.parametrize("text", ["", None])
def test_no_cursor_is_the_beginning(text: str | None) -> None:
    assert feed.parse_cursor(text) == feed.START


@pytest.mark.parametrize("text", ["1", "1-", "-1", "a-b", "1-2-3", " 1-2", "9" * 20 + "-1"])
def test_bad_cursors(text: str) -> None:
    with pytest.raises(feed.BadCursor):
        feed.parse_cursor(text)


def test_keys_are_random_well_formed_and_hashed() -> None:
    keys = {apikeys.new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(apikeys.looks_like_key(k) for k in keys)
    key = keys.pop()
    assert len(apikeys.key_hash(key)) == 32 and apikeys.key_hash(key) != apikeys.key_hash(key + "x")
    assert not apikeys.looks_like_key(key[:-1])
    assert not apikeys.looks_like_key(key + "=")


VALUE = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["email", "first_name", "Last Name", "code"]), VALUE, max_size=4
        ),
        min_size=1,
        max_size=20,
    )
)
def test_json_recipients_are_read_back_by_the_import_at_their_positions(
    recipients: list[dict[str, str]],
) -> None:
    written = recipients_csv(recipients)
    seen = {}
    with written.file:
        _, rows = imports.read_recipients(written.file, hash_key=b"k")  # type: ignore[arg-type]
        for item in rows:
            position = written.position(item.line)
            assert 1 <= position <= len(recipients)
            assert position not in seen, "two results for one recipient"
            seen[position] = item
    # Every recipient gets exactly one verdict (accepted or rejected), at its position.
    assert sorted(seen) == list(range(1, len(recipients) + 1))
    for position, item in seen.items():
        if isinstance(item, imports.Row):
            assert item.email == addresses.normalise(recipients[position - 1]["email"])


def test_drop_cells_are_spreadsheet_safe() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    data = feed.csv_bytes(
        [
            feed.Event("opt_out", "=cmd@example.com", at),
            feed.Event("opt_out", "+1@example.com", at),
            feed.Event("erase", None, at),
        ]
    )
    rows = list(csv.reader(io.StringIO(data.decode())))
    assert rows == [
        ["kind", "email", "at"],
        ["opt_out", "'=cmd@example.com", "2026-01-02T03:04:05+00:00"],
        ["opt_out", "'+1@example.com", "2026-01-02T03:04:05+00:00"],
        ["erase", "", "2026-01-02T03:04:05+00:00"],
    ]
