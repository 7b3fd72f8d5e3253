"""The feedback loop's pure rules: which reports are well-formed events, when a campaign
pauses itself."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from worker.feedback import FEEDBACK_KINDS, SOURCES, Event, Pause, Policy, pause_reason

POLICY = Policy(pause_min_sent=1000, pause_bounce_rate=0.05, pause_complaint_rate=0.001)


def test_nothing_pauses_before_the_minimum_of_accepted_sends() -> None:
    assert pause_reason(POLICY, sent=999, refused=0, hard=999, complaints=999) is None


def test_the_bounce_rate_counts_refusals_at_send_time_among_the_tries() -> None:
    # 50 hard bounces of 1,000 tries: 5 %.
    assert pause_reason(POLICY, sent=1000, refused=0, hard=50, complaints=0) == Pause(
        "bounce_rate", 0.05, 1000
    )
    # 49 of 1,000: under. 50 bounces of which 10 refused at send time: 50 / 1,010 < 5 %.
    assert pause_reason(POLICY, sent=1000, refused=0, hard=49, complaints=0) is None
    assert pause_reason(POLICY, sent=1000, refused=10, hard=50, complaints=0) is None
    assert pause_reason(POLICY, sent=1000, refused=10, hard=51, complaints=0) == Pause(
        "bounce_rate", 0.050495, 1000
    )


def test_the_complaint_rate_is_over_accepted_sends() -> None:
    assert pause_reason(POLICY, sent=2000, refused=0, hard=0, complaints=1) is None
    assert pause_reason(POLICY, sent=2000, refused=0, hard=0, complaints=2) == Pause(
        "complaint_rate", 0.001, 2000
    )


@given(
    sent=st.integers(0, 10**7),
    refused=st.integers(0, 10**5),
    hard=st.integers(0, 10**6),
    complaints=st.integers(0, 10**6),
)
def test_a_pause_names_a_rate_at_or_over_its_threshold(
    sent: int, refused: int, hard: int, complaints: int
) -> None:
    pause = pause_reason(POLICY, sent=sent, refused=refused, hard=hard, complaints=complaints)
    if pause is None:
        return
    assert sent >= POLICY.pause_min_sent
    if pause.reason == "bounce_rate":
        assert hard / (sent + refused) >= POLICY.pause_bounce_rate
    else:
        assert complaints / sent >= POLICY.pause_complaint_rate


def test_an_event_round_trips_through_a_job() -> None:
    event = Event("hard", "ses", status="5.1.1", message_id="invitation-7@acme.example")
    assert Event.from_job(event.as_job()) == event


@given(
    st.dictionaries(
        st.sampled_from(["kind", "source", "status", "message_id", "verp", "invitation_id", "x"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.text(max_size=1100),
            st.sampled_from([*FEEDBACK_KINDS, *SOURCES]),
            st.lists(st.integers(), max_size=2),
        ),
    )
)
def test_a_malformed_event_is_refused_never_raised(data: dict[str, Any]) -> None:
    event = Event.from_job(data)
    if event is None:
        return
    assert event.kind in FEEDBACK_KINDS and event.source in SOURCES
    assert event.invitation_id is not None or event.message_id or event.verp
    assert Event.from_job(event.as_job()) == event


def test_an_event_naming_no_message_is_refused() -> None:
    assert Event.from_job({"kind": "hard", "source": "ses"}) is None
    assert Event.from_job({"kind": "hard", "source": "ses", "invitation_id": True}) is None
    assert Event.from_job({"kind": "late", "source": "ses", "invitation_id": 1}) is None
    assert Event.from_job(["kind", "hard"]) is None
