"""Reading what the sink accepted from its dump files (`smtp-sink -d` format)."""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# The sink writes the envelope first: one line per RCPT TO, e.g. "X-Rcpt-Args: <a@b.c>".
_RECIPIENT = re.compile(rb"^X-Rcpt-Args: <([^>]*)>", re.MULTILINE)


@dataclass(frozen=True)
class Received:
    """Every recipient the sink accepted, how many times, and when the last message came."""

    recipients: Counter[str]
    messages: int
    message_bytes: int
    last_accepted: float | None

    @property
    def average_size(self) -> int:
        """The average size of an accepted message on the wire, in bytes."""
        return self.message_bytes // self.messages if self.messages else 0


def _message_start(dump: bytes) -> int:
    """Where the message begins after the sink's X- lines and its Received header."""
    position = 0
    while dump.startswith(b"X-", position):
        position = dump.find(b"\n", position) + 1 or len(dump)
    if dump.startswith(b"Received: ", position):
        position = dump.find(b"\n", position) + 1 or len(dump)
        while dump[position : position + 1] in (b" ", b"\t"):
            position = dump.find(b"\n", position) + 1 or len(dump)
    return position


def _wire_size(message: bytes) -> int:
    """The size on the wire, where every line ends in CRLF (smtp-sink dumps bare LF)."""
    return len(message) + message.count(b"\n") - message.count(b"\r\n")


def read(folder: Path) -> Received:
    """Read every dump file in `folder`; the last accepted time is the newest file's."""
    recipients: Counter[str] = Counter()
    messages = size = 0
    last = None
    with os.scandir(folder) as entries:
        for entry in entries:
            dump = Path(entry.path).read_bytes()
            recipients.update(r.decode() for r in _RECIPIENT.findall(dump))
            messages += 1
            size += _wire_size(dump[_message_start(dump) :])
            modified = entry.stat().st_mtime_ns / 1e9
            last = modified if last is None else max(last, modified)
    return Received(recipients, messages, size, last)


def clear(folder: Path) -> None:
    """Delete every dump file in `folder`."""
    with os.scandir(folder) as entries:
        for entry in entries:
            os.unlink(entry.path)
