"""The ledger's words, named once: invitation states, campaign statuses, campaign kinds.

They are the values stored in Postgres and printed by `status`, so they stay plain
strings; these types let mypy check every place that writes one.
"""

from __future__ import annotations

from typing import Literal, get_args

InvitationState = Literal[
    "pending", "sending", "sent", "suppressed", "deferred", "failed", "unknown", "cancelled"
]
CampaignStatus = Literal["running", "paused", "cancelled", "completed", "failed"]
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
