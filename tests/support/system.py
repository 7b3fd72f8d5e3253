"""Debian tools some tests need (Chromium, SpamAssassin): `.ci/run` installs them."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(message: str) -> NoReturn:
    """A required system tool is absent: fail the test in CI (`CI` set), skip it elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
