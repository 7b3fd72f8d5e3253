"""The log event of each decision: a first message's and a reminder's."""

from __future__ import annotations

import pytest

from worker.states import INVITATION_STATES, InvitationState, decision_event


@pytest.mark.parametrize("state", [s for s in INVITATION_STATES if s != "pending"])
def test_a_decision_names_its_state_for_first_messages_and_reminders(
    state: InvitationState,
) -> None:
    assert decision_event(state) == f"invitation.{state}"
    assert decision_event(state, 2) == f"reminder.{state}"


def test_a_message_given_back_before_it_started_is_requeued() -> None:
    assert decision_event("pending") == "invitation.requeued"
    assert decision_event("pending", 1) == "reminder.requeued"
