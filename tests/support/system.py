"""What tests need of the machine: Debian tools (Chromium, SpamAssassin, Postfix; `.ci/run`
installs them) and free loopback ports for the servers they start."""

from __future__ import annotations

import os
import socket
from typing import NoReturn

import pytest


def missing(message: str) -> NoReturn:
    """A required system tool is absent: fail the test in CI (`CI` set), skip it elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
