"""The render step: shipped templates, locale fallback, the unsubscribe-link guard, safety."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from markupsafe import escape

from worker.errors import TemplateMissing, TemplateProblem, UnsafeHeaderValue
from worker.render import TemplateStore, oneline

SHIPPED = Path(__file__).resolve().parents[2] / "templates"
UNSUBSCRIBE_URL = "https://unsubscribe.example.com/unsubscribe/AbC123xYz_-9"
SURVEY_URL = "https://survey.example.com/s/8f3a2c9d1e"
# Personal data that must never show up in an error message.
SECRET_NAME = "Geheimnaam-7731"

GOOD_TEXT = "Hello {{ first_name }}\nLeave: {{ unsubscribe_url }}\n"
GOOD_HTML = '<p>Hello {{ first_name }}</p><a href="{{ unsubscribe_url }}">Leave</a>\n'

TemplateFactory = Callable[..., TemplateStore]


def context(**values: object) -> dict[str, object]:
    base: dict[str, object] = {
        "client_name": "Northwind Bank",
        "first_name": "Emma",
        "survey_url": SURVEY_URL,
        "unsubscribe_url": UNSUBSCRIBE_URL,
        "reminder": 0,
    }
    base.update(values)
    return base


@pytest.fixture(scope="module")
def shipped() -> TemplateStore:
    return TemplateStore(SHIPPED)


@pytest.fixture
def make_store(tmp_path: Path) -> TemplateFactory:
    """Write one template `t` under tmp_path, part by part per locale, and open the store."""

    def make(
        subject: str = "Hello {{ client_name }}",
        text: str = GOOD_TEXT,
        html: str = GOOD_HTML,
        locales: tuple[str, ...] = ("en",),
    ) -> TemplateStore:
        for locale in locales:
            folder = tmp_path / "t" / locale
            folder.mkdir(parents=True)
            (folder / "subject.txt").write_text(subject, encoding="utf-8")
            (folder / "body.txt").write_text(text, encoding="utf-8")
            (folder / "body.html").write_text(html, encoding="utf-8")
        return TemplateStore(tmp_path)

    return make


SHIPPED_CASES = [
    (name, locale)
    for name in sorted(p.name for p in SHIPPED.iterdir() if p.is_dir())
    for locale in TemplateStore(SHIPPED).locales(name)
]


def test_the_shipped_templates_cover_the_default_set() -> None:
    assert set(SHIPPED_CASES) >= {
        ("invitation", "en"),
        ("invitation", "nl"),
        ("invitation", "fr"),
        ("marketing", "en"),
    }


@pytest.mark.parametrize(("name", "locale"), SHIPPED_CASES)
@pytest.mark.parametrize("with_first_name", [True, False])
def test_every_shipped_template_renders_with_both_links(
    shipped: TemplateStore, name: str, locale: str, with_first_name: bool
) -> None:
    values = context()
    if not with_first_name:
        del values["first_name"]
    rendered = shipped.render(name, [locale], values)
    assert rendered.locale == locale
    assert rendered.subject and "\n" not in rendered.subject
    assert "Northwind Bank" in rendered.subject
    for body in (rendered.text, rendered.html):
        assert UNSUBSCRIBE_URL in body
        assert SURVEY_URL in body
        assert ("Emma" in body) is with_first_name
    assert f'<html lang="{locale}">' in rendered.html
    assert f'href="{UNSUBSCRIBE_URL}"' in rendered.html
    assert "<script" not in rendered.html.lower()
    assert "<img" not in rendered.html.lower()


@pytest.mark.parametrize(
    ("locale", "word", "sentence"),
    [
        ("en", "Reminder", "a reminder"),
        ("nl", "Herinnering", "een herinnering"),
        ("fr", "Rappel", "un rappel"),
    ],
)
def test_the_invitation_says_a_reminder_is_one_in_every_language(
    shipped: TemplateStore, locale: str, word: str, sentence: str
) -> None:
    first = shipped.render("invitation", [locale], context())
    reminder = shipped.render("invitation", [locale], context(reminder=2))
    assert sentence not in first.subject + first.text + first.html
    assert reminder.subject.startswith(word)
    assert sentence in reminder.text and sentence in reminder.html
    assert reminder.subject.removeprefix(word).lstrip(" :") == first.subject


@pytest.mark.parametrize("name", sorted({name for name, _ in SHIPPED_CASES}))
def test_every_shipped_template_passes_the_launch_check(shipped: TemplateStore, name: str) -> None:
    shipped.check(name)


def test_csv_columns_reach_the_template(make_store: TemplateFactory) -> None:
    store = make_store(text=GOOD_TEXT + "Branch: {{ branch }}\n")
    rendered = store.render("t", ["en"], context(branch="Utrecht"))
    assert "Branch: Utrecht" in rendered.text


def test_the_unsubscribe_url_is_found_in_its_escaped_form_in_html(
    shipped: TemplateStore,
) -> None:
    url = "https://unsubscribe.example.com/unsubscribe?t=abc&k=1"
    rendered = shipped.render("invitation", ["en"], context(unsubscribe_url=url))
    assert url in rendered.text
    assert 'href="https://unsubscribe.example.com/unsubscribe?t=abc&amp;k=1"' in rendered.html


@pytest.mark.parametrize(
    ("preferred", "expected"),
    [
        (["nl", "fr", "en"], "nl"),
        (["de", "fr", "en"], "fr"),
        (["de", "es"], "en"),
        ([], "en"),
        (["NL"], "nl"),
        (["nl_BE"], "nl"),
        (["fr-CA", "nl"], "fr"),
        (["", "../../etc", "fr"], "fr"),
        (["../../etc"], "en"),
    ],
)
def test_locale_falls_back_from_recipient_to_campaign_to_english(
    shipped: TemplateStore, preferred: list[str], expected: str
) -> None:
    assert shipped.resolve_locale("invitation", preferred) == expected
    assert shipped.render("invitation", preferred, context()).locale == expected


def test_locales_lists_only_locale_folders(make_store: TemplateFactory, tmp_path: Path) -> None:
    store = make_store(locales=("en", "nl"))
    (tmp_path / "t" / "Not A Locale").mkdir()
    (tmp_path / "t" / "README").write_text("notes")
    assert store.locales("t") == ["en", "nl"]


def test_a_template_without_english_is_refused(make_store: TemplateFactory) -> None:
    store = make_store(locales=("nl",))
    with pytest.raises(TemplateProblem, match="no 'en' locale"):
        store.render("t", ["nl"], context())
    with pytest.raises(TemplateProblem, match="no 'en' locale"):
        store.check("t")


@pytest.mark.parametrize("name", ["nope", "../templates", "invitation/en", "Invitation", ""])
def test_unknown_or_invalid_template_names_are_refused(shipped: TemplateStore, name: str) -> None:
    with pytest.raises(TemplateProblem):
        shipped.render(name, ["en"], context())


def test_a_template_not_on_this_machine_is_missing_until_it_arrives(
    make_store: TemplateFactory, tmp_path: Path
) -> None:
    store = make_store()
    with pytest.raises(TemplateMissing, match="unknown template 'later'"):
        store.render("later", ["en"], context())
    # Copied half-way: no `en` yet, then `en` without its HTML body.
    (tmp_path / "later").mkdir()
    with pytest.raises(TemplateMissing, match="no 'en' locale"):
        store.render("later", ["en"], context())
    (tmp_path / "later" / "en").mkdir()
    for part, source in (("subject.txt", "Hi"), ("body.txt", GOOD_TEXT)):
        (tmp_path / "later" / "en" / part).write_text(source)
    with pytest.raises(TemplateMissing, match=re.escape("'later' locale 'en' body.html")):
        store.render("later", ["en"], context())
    (tmp_path / "later" / "en" / "body.html").write_text(GOOD_HTML)
    assert store.render("later", ["en"], context()).subject == "Hi"


def test_a_template_that_is_there_but_broken_is_not_missing(make_store: TemplateFactory) -> None:
    store = make_store(text=GOOD_TEXT + "{{ nobody_has_this }}\n")
    with pytest.raises(TemplateProblem) as raised:
        store.render("t", ["en"], context())
    assert not isinstance(raised.value, TemplateMissing)


def test_a_single_string_is_not_taken_for_a_list_of_locales(shipped: TemplateStore) -> None:
    with pytest.raises(TypeError):
        shipped.resolve_locale("invitation", "nl")


@pytest.mark.parametrize(
    ("text", "html", "part"),
    [
        ("Hello {{ first_name }}\n", GOOD_HTML, "body.txt"),
        (GOOD_TEXT, "<p>Hello {{ first_name }}</p>\n", "body.html"),
        (GOOD_TEXT, "<p>Leave: {{ unsubscribe_url[:-1] }}</p>\n", "body.html"),
        ("{% if vip is defined %}{{ unsubscribe_url }}{% endif %}\n", GOOD_HTML, "body.txt"),
    ],
)
def test_a_template_that_hides_the_unsubscribe_link_is_refused(
    make_store: TemplateFactory, text: str, html: str, part: str
) -> None:
    store = make_store(text=text, html=html)
    with pytest.raises(
        TemplateProblem, match=re.escape(f"{part} does not show the unsubscribe link")
    ):
        store.render("t", ["en"], context())
    with pytest.raises(TemplateProblem, match="does not show the unsubscribe link"):
        store.check("t")


def test_a_context_without_unsubscribe_url_is_refused(shipped: TemplateStore) -> None:
    values = context()
    del values["unsubscribe_url"]
    with pytest.raises(TemplateProblem, match="unsubscribe_url"):
        shipped.render("invitation", ["en"], values)
    with pytest.raises(TemplateProblem, match="unsubscribe_url"):
        shipped.render("invitation", ["en"], context(unsubscribe_url=""))


def test_a_missing_variable_names_it_but_no_value(make_store: TemplateFactory) -> None:
    store = make_store(text=GOOD_TEXT + "Branch: {{ branch }}\n")
    with pytest.raises(TemplateProblem) as raised:
        store.render("t", ["en"], context(first_name=SECRET_NAME))
    message = str(raised.value)
    assert "'branch' is undefined" in message
    assert "'t'" in message and "'en'" in message and "body.txt" in message
    assert SECRET_NAME not in message
    assert UNSUBSCRIBE_URL not in message


def test_a_missing_key_computed_from_a_value_does_not_quote_it(
    make_store: TemplateFactory,
) -> None:
    store = make_store(text=GOOD_TEXT + "{{ branches[first_name] }}\n")
    with pytest.raises(TemplateProblem, match="dict object has no such") as raised:
        store.render("t", ["en"], context(first_name=SECRET_NAME, branches={}))
    assert SECRET_NAME not in str(raised.value)


def test_an_expression_error_does_not_quote_the_value(make_store: TemplateFactory) -> None:
    store = make_store(text=GOOD_TEXT + "{{ first_name|int + first_name }}\n")
    with pytest.raises(TemplateProblem) as raised:
        store.render("t", ["en"], context(first_name=SECRET_NAME))
    assert SECRET_NAME not in str(raised.value)
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__


def test_the_launch_check_tolerates_csv_columns_it_cannot_know(
    make_store: TemplateFactory,
) -> None:
    store = make_store(
        text=GOOD_TEXT + "Branch: {{ branch }} {{ branch.city|upper }}\n",
        html=GOOD_HTML + "{% if branch is defined %}<p>{{ branch }}</p>{% endif %}\n",
    )
    store.check("t")
    with pytest.raises(TemplateProblem, match="'branch' is undefined"):
        store.render("t", ["en"], context())


@pytest.mark.parametrize(
    ("part", "source"),
    [
        ("subject.txt", "Hello {{ client_name "),
        ("body.txt", GOOD_TEXT + "{% if first_name %}\n"),
        ("body.html", GOOD_HTML + "{{ first_name | no_such_filter }}"),
    ],
)
def test_a_syntax_error_is_refused_at_launch_and_render(
    make_store: TemplateFactory, part: str, source: str
) -> None:
    parts = {"subject.txt": "subject", "body.txt": "text", "body.html": "html"}
    store = make_store(**{parts[part]: source})
    with pytest.raises(TemplateProblem, match=re.escape(f"'t' locale 'en' {part}")):
        store.check("t")
    with pytest.raises(TemplateProblem, match=re.escape(f"'t' locale 'en' {part}")):
        store.render("t", ["en"], context())


def test_html_is_autoescaped_and_text_is_not(shipped: TemplateStore) -> None:
    name = '<script>alert("x")</script> & Co'
    rendered = shipped.render("invitation", ["en"], context(first_name=name, client_name=name))
    assert "<script>" not in rendered.html
    assert str(escape(name)) in rendered.html
    assert name in rendered.text
    assert name in rendered.subject


@pytest.mark.parametrize(
    "expression",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ first_name.__class__.__init__.__globals__ }}",
        "{{ '{0.__class__}'.format(first_name) }}",
        "{{ [1, 2].append(3) }}",
    ],
)
def test_the_sandbox_blocks_python_internals(make_store: TemplateFactory, expression: str) -> None:
    store = make_store(text=GOOD_TEXT + expression + "\n")
    with pytest.raises(TemplateProblem, match=re.escape("'t' locale 'en' body.txt")):
        store.render("t", ["en"], context())


@pytest.mark.parametrize(
    "subject",
    ["Line one\nLine two", "Line one\rBcc: x", "Null\0byte", "Para\u2028graph", "   ", ""],
)
def test_a_subject_that_is_not_one_line_is_refused(
    make_store: TemplateFactory, subject: str
) -> None:
    store = make_store(subject=subject)
    with pytest.raises(TemplateProblem, match="subject"):
        store.render("t", ["en"], context())


@pytest.mark.parametrize(
    "topic",
    ["x\nBcc: victim@example.org", "x\x0bBcc: victim@example.org", "x\u2028victim", "x\x85victim"],
)
def test_a_value_no_header_can_carry_in_a_raw_subject_refuses_that_message_alone(
    make_store: TemplateFactory, topic: str
) -> None:
    store = make_store(subject="About {{ topic }}")
    with pytest.raises(UnsafeHeaderValue, match="no header can carry") as raised:
        store.render("t", ["en"], context(topic=topic))
    assert "victim" not in str(raised.value)
    assert store.render("t", ["en"], context(topic="cheese")).subject == "About cheese"


@pytest.mark.parametrize("subject", ["About\x0bthis", "Line\x85two", "Form\x0cfeed"])
def test_a_template_whose_own_subject_no_header_can_carry_is_a_template_problem(
    make_store: TemplateFactory, subject: str
) -> None:
    store = make_store(subject=subject)
    with pytest.raises(TemplateProblem, match="not a single line"):
        store.render("t", ["en"], context())


def test_the_subject_is_stripped(make_store: TemplateFactory) -> None:
    store = make_store(subject="\n  Hello {{ client_name }}  \n\n")
    assert store.render("t", ["en"], context()).subject == "Hello Northwind Bank"


def test_oneline_keeps_a_subject_on_one_line() -> None:
    assert oneline("Acme\r\n  Bcc: x\0\u2028y\t") == "Acme Bcc: x y"


def test_templates_are_read_once(make_store: TemplateFactory, tmp_path: Path) -> None:
    store = make_store()
    first = store.render("t", ["en"], context())
    (tmp_path / "t" / "en" / "subject.txt").write_text("Changed")
    assert store.render("t", ["en"], context()) == first


@pytest.mark.parametrize("expression", ["{{ range(3)|list }}", "{{ lipsum() }}"])
def test_templates_see_no_jinja_globals(make_store: TemplateFactory, expression: str) -> None:
    store = make_store(text=GOOD_TEXT + expression + "\n")
    with pytest.raises(TemplateProblem, match="is undefined"):
        store.render("t", ["en"], context())


@given(first_name=st.text(), client_name=st.text(), case=st.sampled_from(SHIPPED_CASES))
def test_any_name_renders_every_shipped_template_escaped(
    shipped: TemplateStore, first_name: str, client_name: str, case: tuple[str, str]
) -> None:
    name, locale = case
    values = context(first_name=first_name, client_name=client_name)
    rendered = shipped.render(name, [locale], values)
    assert rendered.locale == locale
    assert len(rendered.subject.splitlines()) == 1 and "\0" not in rendered.subject
    assert oneline(client_name) in rendered.subject
    assert client_name in rendered.text
    assert str(escape(client_name)) in rendered.html
    if first_name.strip():
        assert first_name.strip() in rendered.text
        assert str(escape(first_name.strip())) in rendered.html
    assert UNSUBSCRIBE_URL in rendered.text
    assert f'href="{UNSUBSCRIBE_URL}"' in rendered.html
