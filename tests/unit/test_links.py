"""Per-recipient links: only absolute http(s) survey URLs pass, and the survey reference is
added without losing the URL's own parts."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.errors import InvalidUrl
from worker.links import check_survey_url, survey_link, survey_ref, unsubscribe_link

words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=10)


@given(
    path=words,
    query=st.lists(st.tuples(words, st.text(max_size=10)), max_size=3),
    fragment=st.one_of(st.just(""), words),
    invitation_id=st.integers(min_value=1, max_value=2**62),
)
def test_survey_link_keeps_the_url_and_adds_the_reference(
    path: str, query: list[tuple[str, str]], fragment: str, invitation_id: int
) -> None:
    base = f"https://survey.example.com/{path}"
    if query:
        base += "?" + "&".join(f"{k}={v}" for k, v in query)
    if fragment:
        base += f"#{fragment}"
    ref = survey_ref(b"key", invitation_id)
    link = urlsplit(survey_link(base, ref))
    original = urlsplit(base)
    assert (link.scheme, link.netloc, link.path) == (
        original.scheme,
        original.netloc,
        original.path,
    )
    assert link.fragment == original.fragment
    pairs = parse_qsl(link.query, keep_blank_values=True)
    assert pairs[-1] == ("r", ref)
    assert pairs[:-1] == parse_qsl(original.query, keep_blank_values=True)


def test_survey_refs_differ_per_invitation_and_per_key() -> None:
    assert survey_ref(b"key", 1) != survey_ref(b"key", 2)
    assert survey_ref(b"key", 1) != survey_ref(b"other", 1)
    assert survey_ref(b"key", 1) == survey_ref(b"key", 1)


def test_unsubscribe_link_joins_base_and_token() -> None:
    assert unsubscribe_link("https://u.example/", "T0k") == "https://u.example/unsubscribe/T0k"


labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
url_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789-._~!$&'()*+,;=:@/%20")
good_urls = st.builds(
    lambda scheme, host, port, path, query, fragment: (
        f"{scheme}://{host}{port}/{path}{query}{fragment}"
    ),
    scheme=st.sampled_from(["http", "https", "HTTPS"]),
    host=st.lists(labels, min_size=1, max_size=4).map(".".join)
    | st.sampled_from(["[::1]", "[2001:db8::7]", "192.0.2.1", "exämple.de", "例え.jp"]),
    port=st.sampled_from(["", ":8080", ":443"]),
    path=url_text.map(lambda t: t.replace("%", "%25")),
    query=st.sampled_from(["", "?", "?a=1&b=2", "?q=caf%C3%A9"]),
    fragment=st.sampled_from(["", "#", "#top"]),
)
# What no link may hold: C0 and C1 controls, spaces, line and paragraph separators, and
# format characters such as the right-to-left override.
unsafe_characters = st.characters(categories=["Cc", "Zs", "Zl", "Zp", "Cf"])


@given(good_urls)
def test_absolute_http_urls_with_a_host_pass_unchanged(url: str) -> None:
    assert check_survey_url(url) == url


@given(good_urls, unsafe_characters, st.integers(min_value=0))
def test_a_space_or_control_character_anywhere_is_refused(
    url: str, char: str, position: int
) -> None:
    at = position % (len(url) + 1)
    with pytest.raises(InvalidUrl):
        check_survey_url(url[:at] + char + url[at:])


@given(st.from_regex(r"[A-Za-z][A-Za-z0-9+.-]{0,10}", fullmatch=True), good_urls)
def test_only_the_http_and_https_schemes_pass(scheme: str, url: str) -> None:
    other = scheme + url[url.index(":") :]
    if scheme.lower() in ("http", "https"):
        assert check_survey_url(other) == other
    else:
        with pytest.raises(InvalidUrl, match="http"):
            check_survey_url(other)


@given(st.text())
def test_whatever_passes_is_an_http_url_with_a_host_and_nothing_unsafe(text: str) -> None:
    try:
        check_survey_url(text)
    except InvalidUrl:
        return
    parts = urlsplit(text)
    assert parts.scheme.lower() in ("http", "https")
    assert parts.hostname
    assert not any(unicodedata.category(c) in ("Cc", "Zs", "Zl", "Zp", "Cf") for c in text)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("javascript:alert(1)", "is not an http:// or https:// URL"),
        ("JaVaScRiPt://survey.example/%0Aalert(1)", "is not an http:// or https:// URL"),
        ("data:text/html,<script>alert(1)</script>", "which a URL cannot hold"),
        ("vbscript:msgbox", "is not an http:// or https:// URL"),
        ("ftp://survey.example/s", "is not an http:// or https:// URL"),
        ("//survey.example/s", "is not an http:// or https:// URL"),
        ("survey.example/s", "is not an http:// or https:// URL"),
        ("/s?id=1", "is not an http:// or https:// URL"),
        ("", "is not an http:// or https:// URL"),
        ("please take our survey", "a space or control character"),
        ("https://", "has no host"),
        ("https:///s", "has no host"),
        ("https:survey.example", "has no host"),
        ("https://survey.example/s\r\nBcc: victim@example.com", "a space or control character"),
        ("https://survey.example/s\u2028x", "a space or control character"),
        ("https://survey.example/\u202egnp.exe", "a space or control character"),
        ("https://bank.example@evil.example/", "user name or password"),
        ("https://evil.example\\@bank.example/", "which a URL cannot hold"),
        ('https://survey.example/"onmouseover="x', "which a URL cannot hold"),
        ("https://survey.example/<b>", "which a URL cannot hold"),
        ("https://survey.example:99999/", "malformed host or port"),
        ("https://survey.example:http/", "malformed host or port"),
        ("https://[not-ipv6]/", "malformed host"),
        ("https://surv%65y.example/", "malformed host"),
        ("https://survey.example/100%", "% not followed by two hex digits"),
        ("https://survey.example/" + "s" * 2000, "longer than 2000 characters"),
    ],
)
def test_bad_survey_urls_are_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(InvalidUrl, match=re.escape(reason)):
        check_survey_url(url)
