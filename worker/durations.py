"""Durations as users write them: `90s`, `15m`, `12h`, `3d`, `2w` (one number, one unit)."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"([0-9]{1,9})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Longer than anyone means (ten years): the rest is a typo.
MAX = timedelta(days=3650)


def parse(text: str) -> timedelta:
    """The duration `text` names; ValueError (saying what is accepted) for anything else,
    zero and more than ten years included."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 12h, 3d or 2w")
    value = timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    if not timedelta(0) < value <= MAX:
        raise ValueError(f"{text!r} must be more than nothing and at most ten years")
    return value
