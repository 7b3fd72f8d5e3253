"""The field period at send time: which of a slice's time zones may start messages now,
how many more the campaign may start today, and when a slice that waits runs again.

A campaign without a window, a daily cap or a close has no `Period`: its slices send as
they always did. Waiting costs nothing: a slice that can send nothing now asks to run
again at the next opening of one of its zones' windows (or the next day of its client's
calendar, or the close), and no job runs in between.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from worker import ledger, records, schedule
from worker.db import Conn


@dataclass
class Period:
    """One slice's view of its campaign's field period, while the slice runs."""

    campaign: records.Campaign
    window: schedule.Window | None
    client_zone: ZoneInfo
    # The time zones of the slice's open invitations, read when the slice starts.
    zones: list[str] = field(default_factory=list)
    # The day of the client's calendar the claim in progress counts on, if paced.
    day: date | None = None
    # Set when a claim found the day's quota spent.
    spent: bool = False

    @classmethod
    async def of(
        cls, conn: Conn, campaign: records.Campaign, first_id: int, last_id: int
    ) -> Period | None:
        """The period of the campaign for the slice `[first_id, last_id]`; None when the
        campaign has no window, no daily cap and no close."""
        if campaign.send_window is None and campaign.per_day is None and campaign.close_at is None:
            return None
        period = cls(
            campaign,
            None if campaign.send_window is None else schedule.parse(campaign.send_window),
            schedule.zone(campaign.timezone),
        )
        if period.window is not None:
            work = await ledger.open_by_zone(
                conn, campaign.id, first_id, last_id, campaign.timezone
            )
            period.zones = [w.zone for w in work]
        return period

    def closed(self, now: datetime) -> bool:
        """Whether the campaign's close has come."""
        return self.campaign.close_at is not None and now >= self.campaign.close_at

    def open_zones(self, now: datetime) -> list[str] | None:
        """The slice's zones whose window is open at `now`; None: every zone may send."""
        if self.window is None:
            return None
        window = self.window
        return [z for z in self.zones if schedule.is_open(window, schedule.zone(z), now)]

    async def admit(self, conn: Conn, limit: int) -> tuple[list[str] | None, int]:
        """In the claim's transaction: the zones that may send now (None: all) and how many
        invitations the claim may take, at most `limit` (0: none now)."""
        now = datetime.now(UTC)
        zones = self.open_zones(now)
        if self.closed(now) or zones == []:
            return zones, 0
        per_day = self.campaign.per_day
        if per_day is not None:
            self.day = schedule.local_day(self.client_zone, now)
            left = await ledger.day_left(conn, self.campaign.id, self.day, per_day)
            self.spent = left == 0
            limit = min(limit, left)
        return zones, limit

    async def count(self, conn: Conn, started: int) -> None:
        """In the claim's transaction: count the messages it started on the day."""
        if self.day is not None and started:
            await ledger.count_day(conn, self.campaign.id, self.day, started)

    async def retry_at(
        self, conn: Conn, first_id: int, last_id: int, due: datetime | None
    ) -> datetime | None:
        """When the slice should run again, `due` being when its first deferred invitation
        is due: at the next opening of a window that has work waiting, not before the next
        day once the day's quota is spent, never after the close. Notes it on the campaign
        (`waiting_until`) when that is ahead, so reconcile leaves the campaign alone."""
        now = datetime.now(UTC)
        if self.window is not None or self.spent:
            work = await ledger.open_by_zone(
                conn, self.campaign.id, first_id, last_id, self.campaign.timezone
            )
            due = _next_opening(self.window, work, now) if self.window is not None else due
            if self.spent and work:
                tomorrow = schedule.next_day(self.client_zone, now)
                due = tomorrow if due is None else max(due, tomorrow)
        close_at = self.campaign.close_at
        if due is not None and close_at is not None:
            due = min(due, close_at)
        if due is not None and due > now:
            await ledger.wait_until(conn, self.campaign.id, due)
        return due


def _next_opening(
    window: schedule.Window, work: list[ledger.ZoneWork], now: datetime
) -> datetime | None:
    """The first moment something of `work` may start: a pending invitation when its zone's
    window next opens (if it is not open now: then another worker holds it), a deferred
    one when it is due and its zone's window is open."""
    candidates = []
    for w in work:
        tz = schedule.zone(w.zone)
        if w.pending and not schedule.is_open(window, tz, now):
            candidates.append(schedule.next_open(window, tz, now))
        if w.due is not None:
            candidates.append(schedule.next_open(window, tz, max(w.due, now)))
    return min((c for c in candidates if c is not None), default=None)
