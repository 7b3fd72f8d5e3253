"""The ledger's words, named once: invitation states, campaign statuses, campaign kinds,
which states are final, which statuses ended, the order states are shown in, and the
actions each status allows.

They are the values stored in Postgres and printed by `status`, so they stay plain
strings; these types let mypy check every place that writes one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

InvitationState = Literal[
    "pending",
    "sending",
    "sent",
    "suppressed",
    "deferred",
    "failed",
    "unknown",
    "cancelled",
    "expired",
]
# `scheduled`: waiting for its --start-at, nothing sent yet.
CampaignStatus = Literal["scheduled", "running", "paused", "cancelled", "completed", "failed"]
Kind = Literal["survey", "marketing"]


def decision_event(state: InvitationState, round: int = 0) -> str:
    """The log event of a decision that left an invitation in `state`; one given back
    before it started (pending again) is `invitation.requeued`; a reminder's (`round` > 0)
    is `reminder.sent`, `reminder.suppressed`, ..."""
    what = "reminder" if round else "invitation"
    return f"{what}.requeued" if state == "pending" else f"{what}.{state}"


INVITATION_STATES: tuple[InvitationState, ...] = get_args(InvitationState)
CAMPAIGN_STATUSES: tuple[CampaignStatus, ...] = get_args(CampaignStatus)
KINDS: tuple[Kind, ...] = get_args(Kind)

# The states an invitation never leaves: it was decided.
# `expired`: not sent before the campaign's --close-at.
FINAL_STATES: tuple[InvitationState, ...] = (
    "sent",
    "suppressed",
    "failed",
    "unknown",
    "cancelled",
    "expired",
)
# The statuses of a campaign that ended: nothing more is sent.
ENDED_STATUSES: tuple[CampaignStatus, ...] = ("completed", "cancelled", "failed")
# The order states are shown in (progress bars, `status --watch`): decided first, then
# what is still to do.
DISPLAY_ORDER: tuple[InvitationState, ...] = (*FINAL_STATES, "deferred", "sending", "pending")

Action = Literal["pause", "resume", "cancel"]
# Where each action may start from, and where it leads.
MOVES: dict[Action, tuple[tuple[CampaignStatus, ...], CampaignStatus]] = {
    "pause": (("running",), "paused"),
    "resume": (("paused",), "running"),
    "cancel": (("scheduled", "running", "paused"), "cancelled"),
}


def actions_from(status: str) -> tuple[Action, ...]:
    """The actions a campaign in `status` allows (none once it ended)."""
    return tuple(action for action, (allowed_from, _) in MOVES.items() if status in allowed_from)


def decided(counts: Mapping[str, int]) -> int:
    """How many of these invitations (counts per state) reached a final state."""
    return sum(counts.get(s, 0) for s in FINAL_STATES)


def in_display_order(counts: Mapping[str, int]) -> list[str]:
    """The states of `counts` in DISPLAY_ORDER, any other state after them by name."""
    known = [s for s in DISPLAY_ORDER if s in counts]
    return known + sorted(set(counts) - set(DISPLAY_ORDER))
