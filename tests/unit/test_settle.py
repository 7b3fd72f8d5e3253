"""How reconcile settles an invitation a lost worker left `sending`, by its journal mark."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import journal, records
from worker.journal import Mark

EXPIRED = records.Expired(7, 1, "acme", b"h" * 32, "surveys@acme.example")


@pytest.mark.parametrize("resend", [False, True])
def test_accepted_is_sent_with_its_message_id(resend: bool) -> None:
    outcome = journal.settle(
        EXPIRED, Mark.ACCEPTED, message_id="invitation-7@acme.example", resend=resend
    )
    assert (outcome.state, outcome.smtp_code, outcome.message_id) == (
        "sent",
        250,
        "invitation-7@acme.example",
    )
    assert outcome.started


@pytest.mark.parametrize("mark", [Mark.QUEUED, Mark.TAKEN_BACK])
@pytest.mark.parametrize("resend", [False, True])
def test_never_started_goes_back_without_counting_an_attempt(mark: Mark, resend: bool) -> None:
    outcome = journal.settle(EXPIRED, mark, message_id="m", resend=resend)
    assert (outcome.state, outcome.reason, outcome.started) == (
        "pending",
        "worker_lost_before_smtp",
        False,
    )


@pytest.mark.parametrize("mark", [Mark.STARTED, None])
def test_started_or_unjournaled_is_unknown_unless_resent(mark: Mark | None) -> None:
    held = journal.settle(EXPIRED, mark, message_id="m", resend=False)
    again = journal.settle(EXPIRED, mark, message_id="m", resend=True)
    assert (held.state, held.reason) == ("unknown", "worker_lost_during_smtp")
    assert (again.state, again.reason, again.started) == (
        "pending",
        "worker_lost_during_smtp",
        True,
    )


@given(st.lists(st.tuples(st.integers(1, 2**63 - 1), st.sampled_from(list(Mark)))))
def test_a_log_says_the_last_mark_of_each_invitation(entries: list[tuple[int, Mark]]) -> None:
    log = "".join(f"{mark.value}{invitation_id}," for invitation_id, mark in entries).encode()
    assert journal.parse(log) == dict(entries)
