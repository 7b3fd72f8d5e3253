"""The grammar of a client's name inside a sentence, per locale (pure).

French elides the preposition "de" before a vowel or a mute h: "des enquêtes d'Acme",
"pour le compte d'Hermès", but "de Globex". English and Dutch put a name in the shipped
sentences unchanged.
"""

from __future__ import annotations

import unicodedata

# Base letters (accents stripped) before which French elides "de".
_ELIDING = frozenset("aeiouh")
_VOWELS = frozenset("aeiouy")


def _base(letter: str) -> str:
    """The letter without its accents, in lower case: "É" -> "e"."""
    return unicodedata.normalize("NFD", letter)[:1].lower()


def french_de(name: object) -> str:
    """ "de NAME", elided to "d'NAME" before a vowel or an h (a name cannot say whether its
    h is aspirated; the usual one in company names is mute). A "y" elides only before a
    consonant ("d'Yves", "de Yahoo")."""
    text = str(name).strip()
    first = _base(text[:1])
    second = _base(text[1:2])
    if first in _ELIDING or (first == "y" and second and second not in _VOWELS):
        return f"d'{text}"
    return f"de {text}" if text else "de"
