"""The digest of a launch covers every byte of its file and its options, however the file
is read."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st

from worker.request_digest import RequestDigest

OPTIONS = {"template": "invitation", "locale": "en", "reminders": 0}


@given(st.binary(), st.integers(min_value=0, max_value=5))
def test_reading_part_then_finishing_digests_the_whole_file(data: bytes, read: int) -> None:
    partly = RequestDigest(OPTIONS, io.BytesIO(data))
    lines = iter(partly)
    taken = b"".join(line for _, line in zip(range(read), lines, strict=False))
    assert data.startswith(taken)
    assert partly.finish() == RequestDigest(OPTIONS, io.BytesIO(data)).finish()


@given(st.binary(), st.binary())
def test_files_that_differ_digest_differently(a: bytes, b: bytes) -> None:
    same = (
        RequestDigest(OPTIONS, io.BytesIO(a)).finish()
        == RequestDigest(OPTIONS, io.BytesIO(b)).finish()
    )
    assert same == (a == b)


def test_options_count_and_their_order_does_not() -> None:
    data = b"email\nann@example.com\n"
    digest = RequestDigest(OPTIONS, io.BytesIO(data)).finish()
    reordered = dict(reversed(list(OPTIONS.items())))
    assert RequestDigest(reordered, io.BytesIO(data)).finish() == digest
    assert RequestDigest({**OPTIONS, "locale": "nl"}, io.BytesIO(data)).finish() != digest
