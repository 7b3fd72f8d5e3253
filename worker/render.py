"""Render a message definition into subject, text and HTML, refusing any that hides the link.

Templates live in `templates/<name>/<locale>/{subject.txt,body.txt,body.html}` and run in a
Jinja sandbox with `StrictUndefined`. Apart from reading each template file once, rendering
is a pure function of the template, the preferred locales and the context.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from jinja2 import ChainableUndefined, StrictUndefined, Template, TemplateError
from jinja2 import meta as jinja_meta
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing, object_type_repr
from markupsafe import escape

from worker.errors import TemplateProblem, UnsafeHeaderValue
from worker.message import UNSAFE_IN_HEADER

__all__ = ["FALLBACK_LOCALE", "Rendered", "TemplateStore", "oneline"]

FALLBACK_LOCALE = "en"

Part = Literal["subject.txt", "body.txt", "body.html"]

_NAME = re.compile(r"[a-z0-9_-]{1,64}")
# A lower-case language tag as used for directory names: "en", "nl", "pt-br", "zh-hant".
_LOCALE = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{2,8})?")

_CONTROL_TO_SPACE = {c: " " for c in [*range(0x20), *range(0x7F, 0xA0)]}

# What check() renders every locale with. Recipient columns it does not know are bound to
# a permissive undefined instead (see `TemplateStore.check`).
_SAMPLE_CONTEXT: Mapping[str, object] = {
    "client_name": "Sample Client",
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
    return env


def _where(name: str, locale: str, part: Part) -> str:
    return f"template {name!r} locale {locale!r} {part}"


class TemplateStore:
    """The templates under one directory, compiled on first use and kept for the process."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._text_env = _environment(autoescape=False)
        self._html_env = _environment(autoescape=True)
        self._locales: dict[str, list[str]] = {}
        self._compiled: dict[tuple[str, str, Part], _Compiled] = {}

    def locales(self, name: str) -> list[str]:
        """The locales template `name` exists in, sorted; `TemplateProblem` if it does not."""
        if name not in self._locales:
            if not _NAME.fullmatch(name):
                raise TemplateProblem(f"invalid template name {name!r}")
            directory = self._root / name
            if not directory.is_dir():
                raise TemplateProblem(f"unknown template {name!r}")
            self._locales[name] = sorted(
                p.name for p in directory.iterdir() if p.is_dir() and _LOCALE.fullmatch(p.name)
            )
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
        available = self.locales(name)
        if FALLBACK_LOCALE not in available:
            raise TemplateProblem(f"template {name!r} has no {FALLBACK_LOCALE!r} locale")
        for tag in preferred:
            wanted = tag.strip().lower().replace("_", "-")
            for candidate in (wanted, wanted.partition("-")[0]):
                if candidate in available:
                    return candidate
        return FALLBACK_LOCALE

    def render(
        self, name: str, preferred_locales: Sequence[str], context: Mapping[str, object]
    ) -> Rendered:
        """Render template `name` in the best of `preferred_locales` with `context`.

        `context` must hold `unsubscribe_url`; the text body must show it verbatim and the
        HTML body in its HTML-escaped form, or the message is refused. The subject is
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
        subject = self._render_part(name, locale, "subject.txt", context).strip()
        text = self._render_part(name, locale, "body.txt", context)
        html = self._render_part(name, locale, "body.html", context)
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
        if escape(url) not in html:
            raise TemplateProblem(
                f"{_where(name, locale, 'body.html')} does not show the unsubscribe link"
            )
        return Rendered(subject=subject, text=text, html=html, locale=locale)

    def _render_part(
        self, name: str, locale: str, part: Part, context: Mapping[str, object]
    ) -> str:
        template = self._template(name, locale, part).template
        try:
            return template.render(context)
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
        except (OSError, UnicodeDecodeError) as e:
            raise TemplateProblem(f"{_where(name, locale, part)}: cannot read: {e}") from e
        env = self._html_env if part == "body.html" else self._text_env
        try:
            tree = env.parse(source)
            return _Compiled(
                template=env.from_string(tree),
                variables=frozenset(jinja_meta.find_undeclared_variables(tree)),
            )
        except TemplateError as e:
            line = getattr(e, "lineno", None)
            at = f" line {line}" if line else ""
            raise TemplateProblem(f"{_where(name, locale, part)}{at}: {e.message}") from e
