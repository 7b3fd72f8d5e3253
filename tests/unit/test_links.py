"""Per-recipient links: the survey reference is added without losing the URL's own parts."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from hypothesis import given
from hypothesis import strategies as st

from worker.links import survey_link, survey_ref, unsubscribe_link

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
