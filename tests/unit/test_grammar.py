"""A client's name inside the shipped sentences: French elides "de", the others keep it."""

from __future__ import annotations

import html
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.grammar import french_de
from worker.render import TemplateStore

SHIPPED = Path(__file__).resolve().parents[2] / "templates"


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("Acme", "d'Acme"),
        ("Émeraude Assurances", "d'Émeraude Assurances"),
        ("Hermès", "d'Hermès"),
        ("Yves Rocher", "d'Yves Rocher"),
        ("Yahoo", "de Yahoo"),
        ("Globex", "de Globex"),
        ("3M", "de 3M"),
        ("  Orange ", "d'Orange"),
        ("", "de"),
    ],
)
def test_french_elides_de_before_a_vowel_or_an_h(name: str, phrase: str) -> None:
    assert french_de(name) == phrase


@given(st.text(min_size=1).map(str.strip).filter(bool))
def test_the_name_itself_is_kept_after_de_or_d(name: str) -> None:
    phrase = french_de(name)
    assert phrase in (f"de {name}", f"d'{name}")
    first = unicodedata.normalize("NFD", name[0])[0].lower()
    if first in "aeiouh":
        assert phrase == f"d'{name}"
    elif first not in "y":
        assert phrase == f"de {name}"


@pytest.mark.parametrize(
    ("locale", "name", "expected", "never"),
    [
        ("fr", "Acme", ["pour le compte d'Acme", "des enquêtes d'Acme"], "de Acme"),
        ("fr", "Globex", ["pour le compte de Globex", "des enquêtes de Globex"], "d'Globex"),
        ("en", "Acme", ["on behalf of Acme", "Unsubscribe from Acme surveys"], "d'Acme"),
        ("nl", "Acme", ["namens Acme", "Afmelden voor enquêtes van Acme"], "d'Acme"),
    ],
)
def test_each_shipped_locale_puts_the_client_s_name_in_its_grammar(
    locale: str, name: str, expected: list[str], never: str
) -> None:
    rendered = TemplateStore(SHIPPED).render(
        "invitation",
        [locale],
        {
            "client_name": name,
            "first_name": "Emma",
            "survey_url": "https://survey.test/s/1",
            "unsubscribe_url": "https://unsubscribe.test/unsubscribe/t",
            "reminder": 0,
        },
    )
    text = " ".join(rendered.text.split())
    page = " ".join(html.unescape(rendered.html).split())
    for phrase in expected:
        assert phrase in text and phrase in page, phrase
    assert never not in text and never not in page
