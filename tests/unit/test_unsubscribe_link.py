"""The HTML unsubscribe-link check: the link must be a visible, clickable `<a href>`, and no
comment, hidden element or other attribute passes for one."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from markupsafe import Markup, escape

from worker.errors import TemplateProblem
from worker.render import TemplateStore, _parse_shows, shows_link

URL = "https://unsubscribe.example.com/unsubscribe/AbC123xYz_-9"
LINK = '<a href="{{ unsubscribe_url }}">Unsubscribe</a>'
TEXT = "Hello {{ first_name }}\nLeave: {{ unsubscribe_url }}\n"
REFUSED = re.escape("body.html does not show the unsubscribe link")

StoreFactory = Callable[[str], TemplateStore]


@pytest.fixture
def store_with(tmp_path: Path) -> StoreFactory:
    """A store holding template `t` (en) whose HTML body is the given source."""
    count = iter(range(1000))

    def make(html: str) -> TemplateStore:
        root = tmp_path / str(next(count))
        folder = root / "t" / "en"
        folder.mkdir(parents=True)
        (folder / "subject.txt").write_text("Hello {{ client_name }}")
        (folder / "body.txt").write_text(TEXT)
        (folder / "body.html").write_text(html)
        return TemplateStore(root)

    return make


def context(**values: str) -> dict[str, object]:
    return {"client_name": "Northwind", "first_name": "Emma", "unsubscribe_url": URL, **values}


BYPASSES = [
    f"<!-- {LINK} -->",
    f"<!--[if mso]>{LINK}<![endif]-->",
    f"<div hidden>{LINK}</div>",
    f'<div hidden="hidden"><p>{LINK}</p></div>',
    f"<div hidden/>{LINK}",
    '<a hidden href="{{ unsubscribe_url }}">Unsubscribe</a>',
    f'<div style="display:none">{LINK}</div>',
    f'<div style="color: red; DISPLAY : None !important">{LINK}</div>',
    f'<span style="visibility:hidden">{LINK}</span>',
    f'<span style="visibility: collapse">{LINK}</span>',
    f'<span style="opacity:0">{LINK}</span>',
    f'<span style="opacity: 0.05">{LINK}</span>',
    f'<span style="font-size:0px">{LINK}</span>',
    f'<div style="max-height:0;overflow:hidden">{LINK}</div>',
    f'<div style="mso-hide:all">{LINK}</div>',
    f'<div style="position:absolute;left:-9999px">{LINK}</div>',
    f'<div style="text-indent:-9999px">{LINK}</div>',
    f'<div style="d\\69splay:none">{LINK}</div>',
    f'<div style="/* */display:none">{LINK}</div>',
    f"<template>{LINK}</template>",
    f"<noscript>{LINK}</noscript>",
    f"<details><summary>More</summary>{LINK}</details>",
    f"<dialog>{LINK}</dialog>",
    f"<select><option>{LINK}</option></select>",
    f"<textarea>{LINK}</textarea>",
    f"<svg>{LINK}</svg>",
    f"<head><title>{LINK}</title></head><body><p>Hi</p></body>",
    f"<head>{LINK}</head>",
    '<script>var u = "{{ unsubscribe_url }}";</script>',
    "<style>/* {{ unsubscribe_url }} */</style>",
    '<img src="logo.png" alt="{{ unsubscribe_url }}">',
    '<a href="https://survey.example/" title="{{ unsubscribe_url }}">Survey</a>',
    '<div data-unsubscribe="{{ unsubscribe_url }}">Unsubscribe</div>',
    "<p>Unsubscribe: {{ unsubscribe_url }}</p>",
    '<a href="{{ unsubscribe_url }}"></a>',
    '<a href="{{ unsubscribe_url }}">  \u200b </a>',
    '<a href="{{ unsubscribe_url }}"><span hidden>Unsubscribe</span></a>',
    '<a href="{{ unsubscribe_url }}x">Unsubscribe</a>',
    '<a href="https://other.example/" href="{{ unsubscribe_url }}">Unsubscribe</a>',
    '<area href="{{ unsubscribe_url }}" alt="Unsubscribe">',
]


@pytest.mark.parametrize("html", BYPASSES)
def test_a_link_that_is_not_visible_is_refused(store_with: StoreFactory, html: str) -> None:
    store = store_with(f"<p>Hello {{{{ first_name }}}}</p>\n{html}\n")
    with pytest.raises(TemplateProblem, match=REFUSED):
        store.render("t", ["en"], context())
    with pytest.raises(TemplateProblem, match=REFUSED):
        store.check("t")


VISIBLE = [
    LINK,
    "<a href='{{ unsubscribe_url }}'>Unsubscribe</a>",
    '<A HREF="{{ unsubscribe_url }}">Unsubscribe</A>',
    "<a href={{ unsubscribe_url }}>Unsubscribe</a>",
    '<a href=" {{ unsubscribe_url }} ">Unsubscribe</a>',
    '<a href="{{ unsubscribe_url }}">{{ unsubscribe_url }}</a>',
    '<a href="{{ unsubscribe_url }}"><img src="x.png" alt="Unsubscribe"></a>',
    '<a href="{{ unsubscribe_url }}" style="color: #555555; font-size: 14px">Unsubscribe</a>',
    f"<div hidden>Preheader</div><p>{LINK}</p>",
    f'<div style="display:none">Preheader</div>{LINK}',
    f"<!--[if mso]><table><tr><td><![endif]-->{LINK}<!--[if mso]></td></tr></table><![endif]-->",
    f"<details open><summary>More</summary>{LINK}</details>",
    f"<!DOCTYPE html><html><head><title>x</title></head><body>{LINK}</body></html>",
    f"<table><tr><td><p>{LINK}</p></td></tr></table>",
]


@pytest.mark.parametrize("html", VISIBLE)
def test_a_visible_link_passes(store_with: StoreFactory, html: str) -> None:
    store = store_with(f"<p>Hello {{{{ first_name }}}}</p>\n{html}\n")
    store.check("t")
    assert URL in store.render("t", ["en"], context()).html


def test_a_value_that_hides_the_link_refuses_that_message(store_with: StoreFactory) -> None:
    # Autoescaping keeps a value from opening a tag, but not from filling an attribute.
    store = store_with(f'<p>Hi {{{{ first_name }}}}</p><div style="{{{{ mood }}}}">{LINK}</div>')
    store.render("t", ["en"], context(mood="color: green"))
    with pytest.raises(TemplateProblem, match=REFUSED):
        store.render("t", ["en"], context(mood="display: none"))
    unquoted = store_with(f"<p>Hi</p><div class={{{{ mood }}}}>{LINK}</div>")
    unquoted.render("t", ["en"], context(mood="calm"))
    with pytest.raises(TemplateProblem, match=REFUSED):
        unquoted.render("t", ["en"], context(mood="calm hidden"))


# Documents built from pieces, with recipient values in every kind of place: text, quoted
# and unquoted attributes, inside a tag, in comments; some hide the link, some do not.
NASTY_VALUES = [
    "Emma",
    "Ann Lee",
    "display:none",
    "calm hidden",
    "div hidden",
    "a href",
    "hidden",
    "--",
    "x--!",
    "x --",
    "   ",
    "\u200b\u200b\u200b",
    "\u00a0\u00a0\u00a0",
    '"><a href="',
    "x&amp;y",
    "&#104;ttps",
    URL,
    URL[:20],
    "Unsubscribe",
    "ab",
]
OPENERS = [
    "<div>",
    "<div hidden>",
    '<div style="{v}">',
    "<div style={v}>",
    '<div title="{v}">',
    "<div {v}>",
    "<{v}>",
    "<!-- {v} -->",
    "<!-- {v}",
    "<p>{v}</p>",
    "{v}",
    "<details>",
    "<template>",
    "<a href=\"{u}\" title='{v}'>",
]
LINKS = [
    '<a href="{u}">{v}</a>',
    '<a href="{u}">Unsubscribe</a>',
    '<a href="{u}"></a>',
    '<a href="{v}">Unsubscribe</a>',
    "<a href={u}>x</a>",
    '<a href="{u}" style="{v}">Leave</a>',
    "<p>{u}</p>",
]
CLOSERS = ["</div>", "</p>", "-->", "", "</a>", "</details>", "</template>"]


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A document and the pieces a template would yield for it: its own text as `str`,
    each output as `Markup`, escaped, or now and then raw (as `|safe` prints it)."""
    values = draw(st.lists(st.sampled_from(NASTY_VALUES) | st.text(max_size=8), max_size=3))
    shapes = draw(st.lists(st.sampled_from(OPENERS + LINKS + CLOSERS), min_size=1, max_size=8))
    pieces: list[str] = []
    for shape in shapes:
        for part in re.split(r"(\{[uv]\})", shape):
            if part == "{u}":
                pieces.append(escape(URL))
            elif part == "{v}":
                value = draw(st.sampled_from(values)) if values else ""
                # Raw, as `|safe` prints it.
                raw = Markup(value)  # noqa: S704
                pieces.append(raw if draw(st.booleans()) else escape(value))
            elif part:
                pieces.append(part)
    return "".join(pieces), pieces


@given(documents())
def test_the_answer_kept_per_skeleton_is_the_documents_own(document: tuple[str, list[str]]) -> None:
    # Every call may reuse what an earlier document's skeleton answered: it must always
    # be what parsing this very document answers.
    html, pieces = document
    assert shows_link(html, URL, pieces) == _parse_shows(html, URL)


@given(
    st.sampled_from(BYPASSES[:30]),
    st.lists(st.sampled_from(NASTY_VALUES), max_size=3),
)
def test_no_value_makes_a_hidden_link_visible(html: str, values: list[str]) -> None:
    first, *rest = html.split("{{ unsubscribe_url }}")
    pieces: list[str] = [first]
    for text in rest:
        pieces += [escape(URL), text]
    pieces += [escape(value) for value in values]
    assert not shows_link("".join(pieces), URL, pieces)


def test_a_value_that_ends_a_character_reference_is_read_as_one(
    store_with: StoreFactory,
) -> None:
    # "&" and "Emma" show "&Emma"; "&" and "nbsp;" show a no-break space, nothing to click.
    store = store_with('<p>Hi</p><a href="{{ unsubscribe_url }}">&{{ first_name }}</a>')
    store.render("t", ["en"], context(first_name="Emma"))
    with pytest.raises(TemplateProblem, match=REFUSED):
        store.render("t", ["en"], context(first_name="nbsp;"))
