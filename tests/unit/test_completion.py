"""The pure part of completion: Standard Webhooks signatures, completion bodies and survey
references, and COMPLETION_WEBHOOK_SECRET's format.

Signatures are made here from the Standard Webhooks specification (HMAC-SHA256 of
`id.timestamp.body` under the base64-decoded part of `whsec_...`, sent as `v1,<base64>`),
not with worker/completion.py, so the tests check the format rather than echo it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from worker import completion, links
from worker.errors import Malformed, Unauthenticated
from worker.settings import Settings, webhook_secret_key

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
NOW = 1_790_000_000
TIMESTAMP = str(NOW)
WEBHOOK_ID = "msg_2mTQhE1yYFpZ0QJ4b8Nn1x"
BODY = b'{"ref": "AAAAAAAAAAAAAAAA"}'

ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64)
bodies = st.binary(max_size=512)


def signature(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> str:
    content = webhook_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def check(
    *,
    key: bytes = KEY,
    webhook_id: str | None = WEBHOOK_ID,
    timestamp: str | None = TIMESTAMP,
    signatures: str | None = None,
    body: bytes = BODY,
    now: float = NOW,
) -> None:
    if signatures is None:
        signatures = signature(key, webhook_id or "", timestamp or "", body)
    completion.verify(
        KEY, webhook_id=webhook_id, timestamp=timestamp, signatures=signatures, body=body, now=now
    )


# --- Signatures ----------------------------------------------------------------------------


def test_the_secret_of_the_specification_format_gives_its_decoded_key() -> None:
    assert webhook_secret_key(SECRET) == KEY
    assert webhook_secret_key(f"  {SECRET}\n") == KEY


@given(webhook_id=ids, body=bodies, skew=st.integers(-300, 300))
def test_a_request_signed_with_the_key_verifies(webhook_id: str, body: bytes, skew: int) -> None:
    check(webhook_id=webhook_id, body=body, now=NOW + skew)


@given(body=bodies, position=st.integers(min_value=0), flip=st.integers(1, 255))
def test_no_body_verifies_after_any_byte_changed(body: bytes, position: int, flip: int) -> None:
    signed = signature(KEY, WEBHOOK_ID, TIMESTAMP, body)
    if body:
        i = position % len(body)
        changed = body[:i] + bytes([body[i] ^ flip]) + body[i + 1 :]
    else:
        changed = b" "
    with pytest.raises(Unauthenticated):
        check(signatures=signed, body=changed)


@given(other=ids, skew=st.integers(-300, 300))
def test_a_signature_of_another_id_or_timestamp_does_not_verify(other: str, skew: int) -> None:
    if other != WEBHOOK_ID:
        with pytest.raises(Unauthenticated):
            check(signatures=signature(KEY, other, TIMESTAMP, BODY))
    if skew:
        with pytest.raises(Unauthenticated):
            check(signatures=signature(KEY, WEBHOOK_ID, str(NOW + skew), BODY))


@given(key=st.binary(min_size=16, max_size=64))
def test_a_signature_under_another_key_does_not_verify(key: bytes) -> None:
    if key != KEY:
        with pytest.raises(Unauthenticated, match="no valid signature"):
            check(signatures=signature(key, WEBHOOK_ID, TIMESTAMP, BODY))


@given(
    before=st.lists(st.binary(min_size=32, max_size=32).map(base64.b64encode), max_size=4),
    after=st.lists(st.binary(min_size=32, max_size=32).map(base64.b64encode), max_size=4),
)
def test_any_valid_signature_among_several_counts(before: list[bytes], after: list[bytes]) -> None:
    others = [f"v1,{b.decode()}" for b in before], [f"v1,{a.decode()}" for a in after]
    good = signature(KEY, WEBHOOK_ID, TIMESTAMP, BODY)
    check(signatures=" ".join([*others[0], good, *others[1]]))


def test_only_v1_signatures_count() -> None:
    good = signature(KEY, WEBHOOK_ID, TIMESTAMP, BODY).removeprefix("v1,")
    for header in (f"v1a,{good}", f"v2,{good}", good, f"v1;{good}", f"v1,{good}!", "v1,"):
        with pytest.raises(Unauthenticated):
            check(signatures=header)


@pytest.mark.parametrize("skew", [-301, 301, -86_400, 10**9])
def test_a_timestamp_over_five_minutes_away_is_refused(skew: int) -> None:
    timestamp = str(NOW + skew)
    with pytest.raises(Unauthenticated, match="timestamp"):
        check(timestamp=timestamp, signatures=signature(KEY, WEBHOOK_ID, timestamp, BODY))


@pytest.mark.parametrize(
    "timestamp", ["", "-1", "1e9", "\uff11\uff17\uff19\uff10", " 1790000000", "9" * 13]
)
def test_a_timestamp_that_is_not_unix_seconds_is_refused(timestamp: str) -> None:
    with pytest.raises(Unauthenticated):
        check(timestamp=timestamp, signatures=signature(KEY, WEBHOOK_ID, timestamp, BODY))


@pytest.mark.parametrize("missing", ["webhook_id", "timestamp", "signatures"])
def test_a_missing_header_is_refused(missing: str) -> None:
    headers = {"webhook_id": WEBHOOK_ID, "timestamp": TIMESTAMP, "signatures": "v1,AAAA"}
    headers[missing] = ""
    with pytest.raises(Unauthenticated, match="missing"):
        completion.verify(KEY, body=BODY, now=NOW, **headers)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "webhook_id", ["m" * (completion.MAX_WEBHOOK_ID + 1), "msg 1", "msg\x00", "msg\t", "m\u00e9"]
)
def test_a_webhook_id_that_cannot_be_kept_is_refused(webhook_id: str) -> None:
    with pytest.raises(Unauthenticated, match="webhook-id"):
        check(webhook_id=webhook_id)


@given(header=st.text(max_size=200), body=bodies)
def test_any_signature_header_is_refused_or_verified_never_an_error(
    header: str, body: bytes
) -> None:
    with pytest.raises(Unauthenticated):
        check(signatures=header, body=body)


# --- Bodies --------------------------------------------------------------------------------

refs = st.text(min_size=1, max_size=40)


@given(ref=refs)
def test_one_ref_or_a_list_of_refs(ref: str) -> None:
    assert completion.parse_refs(orjson.dumps({"ref": ref})) == [ref]
    assert completion.parse_refs(orjson.dumps({"refs": [ref, "x"]})) == [ref, "x"]


@given(body=bodies)
@example(b"[]")
@example(b'{"ref": 1}')
@example(b'{"refs": "abc"}')
@example(b'{"refs": []}')
@example(b'{"ref": "a", "refs": ["b"]}')
@example(b'{"refs": [null]}')
@example(b'{"refs": [""]}')
@example(b"\xff")
def test_any_body_gives_refs_or_malformed(body: bytes) -> None:
    try:
        found = completion.parse_refs(body)
    except Malformed as e:
        assert e.status == 400
        assert e.reason
    else:
        assert found
        assert all(isinstance(r, str) and r for r in found)


@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(), st.lists
    )
)
def test_a_body_without_ref_or_refs_is_malformed(value: object) -> None:
    with pytest.raises(Malformed):
        completion.parse_refs(orjson.dumps({"reference": value}))


def test_too_many_refs_are_malformed() -> None:
    completion.parse_refs(orjson.dumps({"refs": ["r"] * completion.MAX_REFS}))
    with pytest.raises(Malformed, match="more than"):
        completion.parse_refs(orjson.dumps({"refs": ["r"] * (completion.MAX_REFS + 1)}))


# --- References ----------------------------------------------------------------------------


@given(invitation_id=st.integers(1, 2**63 - 1), key=st.binary(min_size=1, max_size=40))
def test_every_survey_ref_has_the_shape_and_digest_it_stands_for(
    invitation_id: int, key: bytes
) -> None:
    ref = links.survey_ref(key, invitation_id)
    digest = completion.ref_digest(ref)
    assert digest == completion.ref_of(key, invitation_id)
    assert digest is not None and len(digest) == 12
    assert -(2**63) <= completion.ref_prefix(digest) < 2**63


@given(ref=st.text(max_size=40))
@example("AAAAAAAAAAAAAAA")  # 15
@example("AAAAAAAAAAAAAAAAA")  # 17
@example("AAAAAAAAAAAAAAA=")
@example("AAAAAAAAAAAAAAA+")
@example("AAAAAAAAAAAAAAA\n")
def test_a_ref_of_another_shape_stands_for_nothing(ref: str) -> None:
    digest = completion.ref_digest(ref)
    if len(ref) == 16 and all(c.isascii() and (c.isalnum() or c in "-_") for c in ref):
        assert digest is not None and base64.urlsafe_b64encode(digest).decode() == ref
    else:
        assert digest is None


# --- COMPLETION_WEBHOOK_SECRET -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("secret-without-prefix-0123456789", "must be whsec_"),
        (base64.b64encode(KEY).decode(), "must be whsec_"),
        ("whsec_not base64!", "not base64"),
        ("whsec_" + base64.urlsafe_b64encode(b"\xfb" * 24).decode(), "not base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "shorter than 16 bytes"),
        ("whsec_", "shorter than 16 bytes"),
    ],
)
def test_a_bad_secret_is_a_config_error_that_does_not_quote_it(value: str, problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, completion_webhook_secret=value)  # type: ignore[call-arg]
    error = caught.value.errors()[0]
    assert error["loc"] == ("completion_webhook_secret",)
    assert problem in error["msg"]
    assert value.removeprefix("whsec_") not in error["msg"] or not value.removeprefix("whsec_")


def test_the_setting_is_optional_and_gives_the_key() -> None:
    assert Settings(_env_file=None).completion_webhook_key() is None  # type: ignore[call-arg]
    settings = Settings(_env_file=None, completion_webhook_secret=SECRET)  # type: ignore[call-arg]
    assert settings.completion_webhook_key() == KEY


# --- Files of references (`complete --file`) -----------------------------------------------


def test_a_file_gives_its_refs_and_its_bad_lines_by_number() -> None:
    ref = links.survey_ref(KEY, 7)
    lines = [f"{ref}\n".encode(), b"\n", b"  \t\r\n", f" {ref} \r\n".encode(), b"x\n", b"\xff\n"]
    found = completion.read_ref_lines(lines)
    assert found.refs == [ref, ref]
    assert found.rejected == [(5, "not a survey reference"), (6, "not UTF-8")]


@given(data=st.binary(max_size=2000))
def test_any_file_gives_refs_or_numbered_rejections(data: bytes) -> None:
    lines = data.splitlines(keepends=True)
    found = completion.read_ref_lines(lines)
    assert all(completion.ref_digest(r) is not None for r in found.refs)
    numbers = [n for n, _ in found.rejected]
    assert numbers == sorted(set(numbers))
    assert all(1 <= n <= len(lines) for n in numbers)
    assert len(found.refs) + len(found.rejected) <= len(lines)


REF = "AAAAAAAAAAAAAAAA"
OTHER_REF = "BBBBBBBBBBBBBBBB"


def test_a_command_records_its_arguments_then_its_files_refs_once() -> None:
    lines = completion.RefLines([OTHER_REF, REF], [(3, "not UTF-8")])
    assert completion.command_refs([REF], lines, "done.txt") == [REF, OTHER_REF]
    assert completion.command_refs([REF, REF], None, None) == [REF]


@pytest.mark.parametrize(
    ("args", "lines", "message"),
    [
        ([""], None, "a REF is empty; nothing was recorded"),
        ([REF, "  "], None, "a REF is empty; nothing was recorded"),
        ([], completion.RefLines([], []), "no survey reference in /dev/null"),
        (
            [],
            completion.RefLines([], [(n, "not a survey reference") for n in range(1, 6)]),
            "no survey reference in /dev/null; line 1: not a survey reference; line 2: not a"
            " survey reference; line 3: not a survey reference; 2 more rejected",
        ),
    ],
)
def test_a_command_with_nothing_to_record_is_refused(
    args: list[str], lines: completion.RefLines | None, message: str
) -> None:
    with pytest.raises(completion.NoReference) as refused:
        completion.command_refs(args, lines, "/dev/null")
    assert str(refused.value) == message
