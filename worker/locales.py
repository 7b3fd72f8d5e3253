"""What a locale is, decided once: two lower-case ASCII letters (ISO 639-1 style).

Recipients (the CSV's `locale`), campaigns (`--locale`), unsubscribe tokens, template
folders and the unsubscribe pages all use this rule; `en` is the fallback everywhere.
"""

from __future__ import annotations

import re

FALLBACK = "en"

_LOCALE = re.compile(r"[a-z]{2}")


def is_locale(value: str) -> bool:
    """Whether `value` is a locale as stored: two lower-case ASCII letters."""
    return _LOCALE.fullmatch(value) is not None


def parse(value: str) -> str | None:
    """The locale a person or a file wrote (surrounding space and case ignored), or None."""
    cleaned = value.strip().lower()
    return cleaned if is_locale(cleaned) else None


def or_fallback(value: str) -> str:
    """`value` if it is a locale, else the fallback."""
    return value if is_locale(value) else FALLBACK
