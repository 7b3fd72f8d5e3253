"""The machine's SMTP ceiling: Postfix's C load generator `smtp-source` against the sink."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

from bench.errors import BenchError
from bench.sinks import postfix_tool

MESSAGES = 50_000
SESSIONS = 10
TIMEOUT = 900.0


class CeilingFailed(BenchError):
    """smtp-source did not complete."""


@dataclass(frozen=True)
class Ceiling:
    """How fast smtp-source delivered `messages` messages of `size` bytes."""

    messages: int
    sessions: int
    size: int
    seconds: float

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self.messages / self.seconds


def measure(port: int, size: int) -> Ceiling | None:
    """Time `smtp-source` sending to the sink on `port`; None when it is not installed.

    `-d` keeps each of the `-s` sessions' connections open for the next message, as the
    workers keep theirs; `-l` makes the payload as large as our messages.
    """
    smtp_source = postfix_tool("smtp-source")
    if smtp_source is None:
        return None
    command = [
        smtp_source,
        "-s",
        str(SESSIONS),
        "-d",
        "-m",
        str(MESSAGES),
        "-l",
        str(size),
        "-f",
        "ceiling@bench.example.com",
        "-t",
        "ceiling@example.net",
        f"127.0.0.1:{port}",
    ]
    start = time.perf_counter()
    try:
        subprocess.run(command, capture_output=True, check=True, timeout=TIMEOUT)  # noqa: S603
    except subprocess.CalledProcessError as e:
        raise CeilingFailed(f"smtp-source failed: {e.stderr.decode(errors='replace')}") from e
    except subprocess.TimeoutExpired as e:
        raise CeilingFailed(f"smtp-source did not finish in {TIMEOUT:.0f} s") from e
    return Ceiling(MESSAGES, SESSIONS, size, time.perf_counter() - start)
