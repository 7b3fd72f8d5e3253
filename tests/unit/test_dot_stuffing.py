"""DATA transparency (RFC 5321 section 4.5.2): what the server un-stuffs is the message."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.smtp_session import dot_stuffed

lines = st.lists(st.text(alphabet=".ab \r\n", max_size=12), max_size=8)


def unstuff(wire: bytes) -> bytes:
    """What an SMTP server stores: lines up to the lone '.', each leading dot removed."""
    assert wire.endswith(b"\r\n.\r\n")
    body = wire[: -len(b".\r\n")]
    out = []
    for line in body.split(b"\r\n")[:-1]:
        assert line != b".", "a lone dot would end the message early"
        out.append(line[1:] if line.startswith(b".") else line)
    return b"".join(x + b"\r\n" for x in out)


@given(lines)
def test_the_server_reads_back_the_crlf_normalised_message(parts: list[str]) -> None:
    message = "\r\n".join(parts).encode()
    expected = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert unstuff(dot_stuffed(message)) == expected


def test_leading_dots_are_doubled_and_the_end_is_marked() -> None:
    assert dot_stuffed(b".a\r\n..b\r\nc\r\n") == b"..a\r\n...b\r\nc\r\n.\r\n"
    assert dot_stuffed(b"a") == b"a\r\n.\r\n"
