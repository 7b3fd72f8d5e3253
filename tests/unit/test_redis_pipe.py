"""The journal's Redis reply reader: replies matched to commands in order, however the
bytes are split across reads."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from worker.redis_pipe import _Protocol, encode

REPLIES: list[tuple[bytes, object]] = [
    (b"+OK\r\n", b"OK"),
    (b":42\r\n", 42),
    (b"$-1\r\n", None),
    (b"$0\r\n\r\n", b""),
    (b"$5\r\nab\r\nc\r\n", b"ab\r\nc"),
]


def test_commands_are_resp_arrays_of_bulk_strings() -> None:
    assert (
        encode("HSET", "k", 12, b"s") == b"*4\r\n$4\r\nHSET\r\n$1\r\nk\r\n$2\r\n12\r\n$1\r\ns\r\n"
    )


@given(
    st.lists(st.sampled_from(REPLIES), min_size=1, max_size=12),
    st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=40),
)
def test_replies_reach_their_callbacks_in_order(
    replies: list[tuple[bytes, object]], cuts: list[int]
) -> None:
    protocol = _Protocol()
    got: list[object] = []
    for _ in replies:
        protocol.waiting.append((0.0, got.append))
    stream = b"".join(wire for wire, _ in replies)
    at = 0
    for size in cuts * (len(stream) // len(cuts) + 1):
        if at >= len(stream):
            break
        protocol.data_received(stream[at : at + size])
        at += size
    assert got == [value for _, value in replies]
    assert protocol.lost is None


def test_an_error_reply_is_handed_over_as_an_error() -> None:
    protocol = _Protocol()
    got: list[object] = []
    protocol.waiting.append((0.0, got.append))
    protocol.data_received(b"-NOSCRIPT No matching script\r\n")
    assert isinstance(got[0], ResponseError)


def test_a_reply_nobody_asked_for_loses_the_connection_and_fails_the_rest() -> None:
    protocol = _Protocol()
    protocol.data_received(b":1\r\n")
    assert protocol.lost is not None
    got: list[object] = []
    protocol.waiting.append((0.0, got.append))
    protocol.fail("again")
    assert isinstance(got[0], RedisConnectionError)
