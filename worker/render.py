"""Render a message definition into subject, text and HTML, refusing any that hides the link.

Templates live in `templates/<name>/<locale>/{subject.txt,body.txt,body.html}` and run in a
Jinja sandbox with `StrictUndefined`. Apart from reading each template file once, rendering
is a pure function of the template, the preferred locales and the context.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Literal

from jinja2 import ChainableUndefined, StrictUndefined, Template, TemplateError
from jinja2 import meta as jinja_meta
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing, object_type_repr
from markupsafe import Markup, escape

from worker import grammar, locales
from worker.errors import TemplateMissing, TemplateProblem, UnsafeHeaderValue
from worker.message import DEFAULT_FIRM_NAME, UNSAFE_IN_HEADER

__all__ = [
    "FALLBACK_LOCALE",
    "Rendered",
    "TemplateStore",
    "oneline",
    "shows_link",
]

FALLBACK_LOCALE = locales.FALLBACK

Part = Literal["subject.txt", "body.txt", "body.html"]

_NAME = re.compile(r"[a-z0-9_-]{1,64}")
# A lower-case language tag as used for directory names: "en", "nl", "pt-br", "zh-hant".

_CONTROL_TO_SPACE = {c: " " for c in [*range(0x20), *range(0x7F, 0xA0)]}

# What check() renders every locale with. Recipient columns it does not know are bound to
# a permissive undefined instead (see `TemplateStore.check`).
_SAMPLE_CONTEXT: Mapping[str, object] = {
    "client_name": "Sample Client",
    "firm_name": "Sample Research",
    "first_name": "Sam",
    "survey_url": "https://survey.example.com/s/sample-survey",
    "unsubscribe_url": "https://unsubscribe.example.com/unsubscribe/sample-token",
}


@dataclass(frozen=True)
class Rendered:
    """The three rendered parts of one message, and the locale they were rendered in."""

    subject: str
    text: str
    html: str
    locale: str


@dataclass(frozen=True)
class _Compiled:
    template: Template
    variables: frozenset[str]


class _StrictUndefined(StrictUndefined):
    """`StrictUndefined` whose error names a missing variable but never a lookup key.

    Jinja's own message for `d[key]` quotes the key, and a key computed from the context
    (`{{ names[first_name] }}`) is personal data.
    """

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint is not None:
            return self._undefined_hint
        if self._undefined_obj is missing:
            return f"{self._undefined_name!r} is undefined"
        return f"{object_type_repr(self._undefined_obj)} has no such attribute or element"


def oneline(value: object) -> str:
    """Collapse every run of whitespace and control characters in `value` to one space.

    Templates use it on values bound for the subject header, so that a name with a line
    break in it yields a one-line subject instead of a refused message.
    """
    return " ".join(str(value).translate(_CONTROL_TO_SPACE).split())


# Elements whose content a reader never sees: metadata, raw text, inert or replaced
# content, form controls, and foreign content that may well not render as a link.
_HIDDEN_ELEMENTS = frozenset(
    {
        "audio",
        "canvas",
        "datalist",
        "frameset",
        "head",
        "iframe",
        "map",
        "math",
        "noembed",
        "noframes",
        "noscript",
        "object",
        "option",
        "script",
        "select",
        "style",
        "svg",
        "template",
        "textarea",
        "title",
        "video",
        "xmp",
    }
)
# Elements whose content stays hidden until the reader opens them.
_HIDDEN_UNLESS_OPEN = frozenset({"details", "dialog"})
# Elements without content or end tag: they never enclose anything.
_VOID_ELEMENTS = frozenset(
    {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
    }
)
# CSS declarations (property, value) that hide an element, or take it out of the flow.
_HIDING_DECLARATIONS = frozenset(
    {
        ("display", "none"),
        ("visibility", "hidden"),
        ("visibility", "collapse"),
        ("mso-hide", "all"),
        ("position", "absolute"),
        ("position", "fixed"),
        ("color", "transparent"),
    }
)
# Properties that hide an element at zero; properties that may move or clip it out of
# sight at any value but these.
_HIDING_WHEN_ZERO = frozenset({"font-size", "height", "max-height", "width", "max-width"})
_HIDING_UNLESS = {"clip": ("auto",), "clip-path": ("none",), "transform": ("none",)}
_NUMBER = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))(%|[a-z]*)")
_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|$)", re.DOTALL)


def _hiding(name: str, value: str) -> bool:
    """Whether one CSS declaration may keep its element out of sight."""
    if (name, value) in _HIDING_DECLARATIONS:
        return True
    if name in _HIDING_UNLESS:
        return value not in ("", *_HIDING_UNLESS[name])
    number = _NUMBER.fullmatch(value)
    if number is None:
        return False
    amount = float(number[1])
    if name == "opacity":
        # Nearly transparent is as good as invisible: 0.1 (10 %) at most.
        return amount <= (10 if number[2] == "%" else 0.1)
    if name == "text-indent":
        return amount < 0
    return name in _HIDING_WHEN_ZERO and amount == 0


def _hides(style: str) -> bool:
    """Whether an inline `style` may keep its element out of sight."""
    if "\\" in style:
        # A CSS escape can spell any property or value (`d\69splay: none`).
        return True
    for declaration in _CSS_COMMENT.sub("", style).split(";"):
        name, _, value = declaration.partition(":")
        if _hiding(name.strip().lower(), value.lower().replace("!important", "").strip()):
            return True
    return False


_ASCII_VISIBLE = re.compile(r"[!-~]")


def _is_visible_text(data: str, stand_ins: str) -> bool:
    """Whether `data` shows something: a printable character that is not white space (or
    one of `stand_ins`, which stand for such text in a skeleton)."""
    return _ASCII_VISIBLE.search(data) is not None or any(
        (c.isprintable() and not c.isspace()) or c in stand_ins for c in data
    )


class _LinkFinder(HTMLParser):
    """Reads an HTML document and tells whether it shows `url` as the target of a link a
    reader can see and click: the `href` of an `<a>` with visible content, outside any
    comment, hidden element (`hidden`, a hiding `style`, `<head>`, `<template>`,
    `<noscript>`, ...) and any other attribute. Errs on the side of "not shown"."""

    def __init__(self, url: str, stand_ins: str = "") -> None:
        super().__init__(convert_charrefs=True)
        self.url = url
        self.stand_ins = stand_ins
        self.shown = False
        # The open elements: tag, hidden, is the link.
        self._open: list[tuple[str, bool, bool]] = []

    def _hidden(self) -> bool:
        return bool(self._open) and self._open[-1][1]

    def _in_link(self) -> bool:
        return any(link for _, _, link in self._open)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        first: dict[str, str] = {}
        for name, value in attrs:
            # Browsers keep the first of repeated attributes.
            first.setdefault(name, value or "")
        hidden = (
            self._hidden()
            or tag in _HIDDEN_ELEMENTS
            or (tag in _HIDDEN_UNLESS_OPEN and "open" not in first)
            or "hidden" in first
            or _hides(first.get("style", ""))
        )
        if tag in _VOID_ELEMENTS:
            if tag == "img" and not hidden and self._in_link():
                self.shown = True
            return
        link = tag == "a" and not hidden and first.get("href", "").strip(" \t\n\r\f") == self.url
        self._open.append((tag, hidden, link))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # HTML ignores the slash of `<div/>`: the element stays open.
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        # An end tag closes its element and every element opened inside it; one without
        # an open element is ignored, as browsers do.
        for index in range(len(self._open) - 1, -1, -1):
            if self._open[index][0] == tag:
                del self._open[index:]
                return

    def handle_data(self, data: str) -> None:
        if not self._hidden() and self._in_link() and _is_visible_text(data, self.stand_ins):
            self.shown = True


def _parse_shows(html: str, url: str, stand_ins: str = "") -> bool:
    finder = _LinkFinder(url, stand_ins)
    finder.feed(html)
    finder.close()
    return finder.shown


# A skeleton of a rendered HTML body (see `shows_link`) stands the escaped unsubscribe URL
# with _URL_MARK and each other output of a `{{ }}` that is plain visible text with
# _VALUE_MARK; neither can be in a rendered body that has a skeleton.
_URL_MARK = "\x01"
_VALUE_MARK = "\x00"
# The markup a skeleton may have, in which a mark can only stand in text, in a comment
# (not right before its end) or in a quoted attribute value: a mark can then stand for any
# text without `<`, `>` or a quote and the document still parses into the same elements
# and attributes. Possessive quantifiers and atomic groups: it never backtracks.
_SKELETON = re.compile(
    r"""(?>
        [^<]++
      | <!--(?!-?>)(?>(?!--)(?![\x00\x01]\s*+!?>)(?s:.))*+-->
      | <!(?i:doctype)[^<>\x00\x01]*+>
      | <[a-zA-Z][^\s/>\x00\x01]*+
        (?>\s++[^\s"'<>/=\x00\x01]++
           (?>\s*+=\s*+(?>"[^"]*+"|'[^']*+'|[^\s"'=<>`\x00\x01]++))?+
        )*+
        \s*+/?>
      | </[a-zA-Z][^\s/>\x00\x01]*+\s*+>
    )*+""",
    re.VERBOSE,
)
# A mark in a `style` attribute: the value it stands for could hide the element.
_MARKED_STYLE = re.compile(r"""\sstyle\s*=\s*(?:"[^"]*[\x00\x01]|'[^']*[\x00\x01])""", re.I)
# A mark that may finish a character reference the text before it starts ("&" then
# "nbsp;" shows no visible character).
_MARK_IN_REFERENCE = re.compile(r"&[#A-Za-z0-9]*[\x00\x01]")
# An `&` that does not start one of the references `escape` writes.
_BARE_AMPERSAND = re.compile(r"&(?!(?:amp|lt|gt|#39|#34);)")


def _markable(output: str) -> bool:
    """Whether a mark may stand for one `{{ }}` output: text without markup or quotes,
    whose character references are those `escape` writes, showing something."""
    if "<" in output or ">" in output or '"' in output or "'" in output:
        return False
    if "&" in output and _BARE_AMPERSAND.search(output):
        return False
    return _is_visible_text(output, "")


def _skeleton(html: str, url: str, pieces: Sequence[str]) -> str | None:
    """`html`, made of `pieces`, with the escaped URL and each markable `{{ }}` output
    replaced by marks, or None if it holds a mark character itself."""
    if _URL_MARK in html or _VALUE_MARK in html:
        return None
    escaped_url = str(escape(url))
    marked = []
    for piece in pieces:
        # The template's own text is `str`; what a `{{ }}` printed is escaped `Markup`.
        if isinstance(piece, Markup):
            if piece == escaped_url:
                piece = _URL_MARK
            elif _markable(piece):
                piece = _VALUE_MARK
        marked.append(piece)
    return "".join(marked).replace(escaped_url, _URL_MARK)


@functools.lru_cache(maxsize=1024)
def _skeleton_shows(skeleton: str) -> bool | None:
    """Whether a skeleton shows the link, or None if a mark sits where the text it stands
    for could change what the document shows."""
    if (
        not _SKELETON.fullmatch(skeleton)
        or _MARKED_STYLE.search(skeleton)
        or _MARK_IN_REFERENCE.search(skeleton)
    ):
        return None
    return _parse_shows(skeleton, _URL_MARK, stand_ins=_URL_MARK + _VALUE_MARK)


def shows_link(html: str, url: str, pieces: Sequence[str] = ()) -> bool:
    """Whether the HTML body `html` shows `url` as a link a reader can see and click.

    That is the `href` of an `<a>` that has visible content and is neither in a comment,
    nor in a hidden element (`hidden`, an inline style such as `display:none`,
    `visibility:hidden` or `opacity:0`, `<head>`, `<template>`, `<noscript>`, `<script>`,
    `<style>`, a closed `<details>` ...), nor in an attribute other than `href`. Style
    sheets are not read: a class that hides the link is not seen.

    `pieces` are what the template yielded, joined into `html`: its own text as `str`,
    each `{{ }}` output as escaped `Markup`. Parsing costs about 100 µs, as much as the rest
    of a message, so a "shown" is kept per skeleton of the document: the document with the
    URL and the outputs replaced by marks, which is the same for every message of a
    campaign when the outputs only fill in text and quoted attributes. Any other answer
    comes from parsing the document itself.
    """
    skeleton = _skeleton(html, url, pieces)
    if skeleton is not None and _skeleton_shows(skeleton):
        return True
    return _parse_shows(html, url)


def _environment(*, autoescape: bool) -> ImmutableSandboxedEnvironment:
    # The immutable sandbox also stops templates from mutating the lists and dicts they are
    # given, which keeps rendering free of side effects.
    env = ImmutableSandboxedEnvironment(
        autoescape=autoescape,
        undefined=_StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    # Templates see the message context and nothing else: without Jinja's default globals
    # (range, lipsum, cycler, ...) there is less to abuse, and each render skips merging
    # them into its context, which halves the cost of a small template.
    env.globals.clear()
    env.filters["oneline"] = oneline
    # French templates write "{{ client_name|fr_de }}" for "de Globex" / "d'Acme".
    env.filters["fr_de"] = grammar.french_de
    return env


# How many (template, preferred locales) answers `resolve_locale` keeps.
_RESOLVED_KEPT = 4096


def _first_available(preferred: Sequence[str], available: list[str]) -> str:
    for tag in preferred:
        wanted = tag.strip().lower().replace("_", "-")
        for candidate in (wanted, wanted.partition("-")[0]):
            if candidate in available:
                return candidate
    return FALLBACK_LOCALE


def _where(name: str, locale: str, part: Part) -> str:
    return f"template {name!r} locale {locale!r} {part}"


class TemplateStore:
    """The templates under one directory, compiled on first use and kept for the process."""

    def __init__(self, root: Path, *, firm_name: str = DEFAULT_FIRM_NAME) -> None:
        self._root = root
        # What a template sees when the context does not say it (see `_compile`).
        self._defaults: dict[str, object] = {"firm_name": firm_name}
        self._text_env = _environment(autoescape=False)
        self._html_env = _environment(autoescape=True)
        self._locales: dict[str, list[str]] = {}
        self._resolved: dict[tuple[str, ...], str] = {}
        self._compiled: dict[tuple[str, str, Part], _Compiled] = {}

    def locales(self, name: str) -> list[str]:
        """The locales template `name` exists in, sorted; `TemplateMissing` if it does not.

        The list is kept once it holds `en`: a template without it cannot be used yet, and
        may be one still being copied to this machine.
        """
        if name not in self._locales:
            if not _NAME.fullmatch(name):
                raise TemplateProblem(f"invalid template name {name!r}")
            directory = self._root / name
            if not directory.is_dir():
                raise TemplateMissing(f"unknown template {name!r}")
            found = sorted(
                p.name for p in directory.iterdir() if p.is_dir() and locales.is_locale(p.name)
            )
            if FALLBACK_LOCALE not in found:
                return found
            self._locales[name] = found
        return list(self._locales[name])

    def resolve_locale(self, name: str, preferred: Sequence[str]) -> str:
        """The first of `preferred` that template `name` exists in, else `en`.

        Tags are matched case-insensitively, `_` as `-`, then by their language alone
        ("nl-BE" finds "nl"). Anything that is not a locale is skipped, so a bad value in a
        recipient's `locale` column falls back instead of failing. A template without `en`
        is refused, since every message must have a language to fall back to.
        """
        if isinstance(preferred, str):
            raise TypeError("preferred must be a sequence of locales, not one string")
        key = (name, *preferred)
        resolved = self._resolved.get(key)
        if resolved is None:
            available = self.locales(name)
            if FALLBACK_LOCALE not in available:
                raise TemplateMissing(f"template {name!r} has no {FALLBACK_LOCALE!r} locale")
            resolved = _first_available(preferred, available)
            # Kept once the template's locales are (see `locales`), for the few combinations
            # a campaign's recipients have; a column of junk values cannot fill the memory.
            if name in self._locales and len(self._resolved) < _RESOLVED_KEPT:
                self._resolved[key] = resolved
        return resolved

    def render(
        self, name: str, preferred_locales: Sequence[str], context: Mapping[str, object]
    ) -> Rendered:
        """Render template `name` in the best of `preferred_locales` with `context`.

        `context` must hold `unsubscribe_url`; the text body must show it verbatim and the
        HTML body as the target of a visible link (see `shows_link`), or the message is
        refused. The subject is
        stripped and must be a single non-empty line. A subject that is not, because a
        context value brought a line break or control character into it, raises
        `UnsafeHeaderValue`: that message cannot be sent, others can. Every other failure
        is a `TemplateProblem` naming the template, locale, part and variable. Neither
        error ever quotes a context value.
        """
        locale = self.resolve_locale(name, preferred_locales)
        return self._render(name, locale, context)

    def check(self, name: str) -> None:
        """Refuse, before a campaign starts, a template that cannot render or hides the link.

        Every locale is rendered with a sample context. Recipient CSV columns are not known
        yet, so any other variable a part reads is bound to a permissive undefined: it
        renders empty and is not `defined`, as when a recipient's row lacks the column.
        Binding it per variable, rather than rendering with a second environment, reuses the
        compiled templates. A variable that is missing at send time is caught then, per
        message, by the strict environment.
        """
        self.resolve_locale(name, ())  # refuses an unknown template or one without `en`
        for locale in self.locales(name):
            variables: set[str] = set()
            for part in ("subject.txt", "body.txt", "body.html"):
                variables |= self._template(name, locale, part).variables
            context: dict[str, object] = {v: ChainableUndefined(name=v) for v in variables}
            context.update(_SAMPLE_CONTEXT)
            self._render(name, locale, context)

    def _render(self, name: str, locale: str, context: Mapping[str, object]) -> Rendered:
        url = context.get("unsubscribe_url")
        if not isinstance(url, str) or not url:
            raise TemplateProblem(f"template {name!r}: context has no unsubscribe_url")
        subject = "".join(self._render_part(name, locale, "subject.txt", context)).strip()
        text = "".join(self._render_part(name, locale, "body.txt", context))
        pieces = self._render_part(name, locale, "body.html", context)
        html = "".join(pieces)
        if not subject:
            raise TemplateProblem(f"{_where(name, locale, 'subject.txt')}: subject is empty")
        if UNSAFE_IN_HEADER.search(subject):
            where = _where(name, locale, "subject.txt")
            if any(isinstance(v, str) and UNSAFE_IN_HEADER.search(v) for v in context.values()):
                raise UnsafeHeaderValue(f"{where}: a value holds a character no header can carry")
            raise TemplateProblem(f"{where}: subject is not a single line")
        if url not in text:
            raise TemplateProblem(
                f"{_where(name, locale, 'body.txt')} does not show the unsubscribe link"
            )
        if not shows_link(html, url, pieces):
            raise TemplateProblem(
                f"{_where(name, locale, 'body.html')} does not show the unsubscribe link "
                "as a visible <a href>"
            )
        return Rendered(subject=subject, text=text, html=html, locale=locale)

    def _render_part(
        self, name: str, locale: str, part: Part, context: Mapping[str, object]
    ) -> list[str]:
        """The pieces the part yields: its own text, and what each `{{ }}` printed (the
        HTML body's, for `shows_link`); the other parts whole, in one piece."""
        template = self._template(name, locale, part).template
        try:
            if part == "body.html":
                return list(template.generate(context))
            return [template.render(context)]
        except TemplateError as e:
            # These messages are built from the template's own names and the types of
            # values ("'first_name' is undefined", "access to attribute '__class__' of
            # 'str' object is unsafe"); `_StrictUndefined` keeps lookup keys out of them.
            raise TemplateProblem(f"{_where(name, locale, part)}: {e.message}") from e
        except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as e:
            # Errors raised by template expressions on context values quote those values
            # ("invalid literal for int(): 'Anna'"): keep only the type, drop the chain.
            raise TemplateProblem(
                f"{_where(name, locale, part)}: {type(e).__name__} while rendering "
                "(message withheld: it may quote personal data)"
            ) from None

    def _template(self, name: str, locale: str, part: Part) -> _Compiled:
        key = (name, locale, part)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compile(name, locale, part)
            self._compiled[key] = compiled
        return compiled

    def _compile(self, name: str, locale: str, part: Part) -> _Compiled:
        if locale not in self.locales(name):
            raise TemplateProblem(f"template {name!r} has no locale {locale!r}")
        path = self._root / name / locale / part
        try:
            source = path.read_text(encoding="utf-8")
        except FileNotFoundError as e:
            raise TemplateMissing(f"{_where(name, locale, part)}: no such file") from e
        except (OSError, UnicodeDecodeError) as e:
            raise TemplateProblem(f"{_where(name, locale, part)}: cannot read: {e}") from e
        env = self._html_env if part == "body.html" else self._text_env
        try:
            tree = env.parse(source)
            template = env.from_string(tree)
            # The environment has no globals (see `_environment`): a plain mapping of the
            # store's defaults instead of Jinja's chain of them saves merging the chain into
            # every render's context. A context value wins over a default.
            template.globals = self._defaults
            return _Compiled(
                template=template,
                variables=frozenset(jinja_meta.find_undeclared_variables(tree)),
            )
        except TemplateError as e:
            line = getattr(e, "lineno", None)
            at = f" line {line}" if line else ""
            raise TemplateProblem(f"{_where(name, locale, part)}{at}: {e.message}") from e
