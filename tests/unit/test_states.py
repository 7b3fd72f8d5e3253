"""The states vocabulary: the log event of each decision, the final and ended lists, the
display order and the actions each campaign status allows."""

from __future__ import annotations

import pytest

from worker.states import (
    CAMPAIGN_STATUSES,
    DISPLAY_ORDER,
    ENDED_STATUSES,
    FINAL_STATES,
    INVITATION_STATES,
    MOVES,
    InvitationState,
    actions_from,
    decided,
    decision_event,
    in_display_order,
)


@pytest.mark.parametrize("state", [s for s in INVITATION_STATES if s != "pending"])
def test_a_decision_names_its_state_for_first_messages_and_reminders(
    state: InvitationState,
) -> None:
    assert decision_event(state) == f"invitation.{state}"
    assert decision_event(state, 2) == f"reminder.{state}"


def test_a_message_given_back_before_it_started_is_requeued() -> None:
    assert decision_event("pending") == "invitation.requeued"
    assert decision_event("pending", 1) == "reminder.requeued"


def test_every_state_is_shown_once_decided_ones_first() -> None:
    assert sorted(DISPLAY_ORDER) == sorted(INVITATION_STATES)
    assert DISPLAY_ORDER[: len(FINAL_STATES)] == FINAL_STATES


def test_an_unknown_state_is_shown_after_the_known_ones() -> None:
    counts = {"weird": 1, "pending": 2, "sent": 3, "another": 4}
    assert in_display_order(counts) == ["sent", "pending", "another", "weird"]


def test_only_final_states_count_as_decided() -> None:
    counts = {state: 1 for state in INVITATION_STATES}
    assert decided(counts) == len(FINAL_STATES) == 6


def test_actions_follow_the_moves_and_an_ended_campaign_allows_none() -> None:
    assert actions_from("running") == ("pause", "cancel")
    assert actions_from("paused") == ("resume", "cancel")
    assert actions_from("scheduled") == ("cancel",)
    for status in ENDED_STATUSES:
        assert actions_from(status) == ()
    # Every move leads somewhere an action can leave again, or to an end.
    for _, to in MOVES.values():
        assert to in CAMPAIGN_STATUSES
        assert actions_from(to) or to in ENDED_STATUSES
