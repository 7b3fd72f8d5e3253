"""What `/ops` reads from the ledger: the campaigns worth watching, their client's route,
their invitations by state, their feedback and their recent sends. All of `/ops`'s SQL is
here."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from asyncpg import Record

from worker.campaigns import ScheduleReport
from worker.db import Conn

# Campaigns that ended are shown too, the latest this many.
RECENT_ENDED = 10
# The send-rate chart: this many buckets of this many seconds, the newest last.
BUCKETS = 40
BUCKET_SECONDS = 15


@dataclass(frozen=True)
class CampaignRow:
    """One campaign as `/ops` lists it."""

    id: int
    client_id: str
    name: str
    kind: str
    status: str
    status_reason: str | None
    created_at: datetime
    # The relays of its client's route (None: every relay).
    route: list[str] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    feedback: dict[str, int] = field(default_factory=dict)
    # Accepted sends per bucket of BUCKET_SECONDS, oldest first, the last one now.
    sends: tuple[int, ...] = ()
    # `scheduled for ...` or `waiting for the window; next send ...` (its field period).
    waiting: str | None = None
    # Its client's sending domain when the last check failed: `DOMAIN (DMARC p=POLICY)`.
    failing_domain: str | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())


async def overview(conn: Conn) -> list[CampaignRow]:
    """Scheduled, running and paused campaigns, and the latest that ended; newest first."""
    rows = await conn.fetch(
        """SELECT c.id, c.client_id, c.name, c.kind, c.status, c.reason, c.created_at,
                  cl.relays, c.start_at, c.close_at, c.send_window, c.per_day,
                  c.waiting_until, now() AS now
           FROM campaigns c JOIN clients cl ON cl.id = c.client_id
           WHERE c.status IN ('scheduled', 'running', 'paused')
              OR c.id IN (SELECT id FROM campaigns
                          WHERE status NOT IN ('scheduled', 'running', 'paused')
                          ORDER BY id DESC LIMIT $1)
           ORDER BY c.id DESC""",
        RECENT_ENDED,
    )
    ids = [r["id"] for r in rows]
    counts: dict[int, dict[str, int]] = {i: {} for i in ids}
    for r in await conn.fetch(
        """SELECT campaign_id, state, count(*) AS n FROM invitations
           WHERE campaign_id = ANY($1) AND round = 0 GROUP BY 1, 2""",
        ids,
    ):
        counts[r["campaign_id"]][r["state"]] = r["n"]
    feedback: dict[int, dict[str, int]] = {i: {} for i in ids}
    for r in await conn.fetch(
        """SELECT campaign_id, kind, count(*) FILTER (WHERE source = 'smtp') AS refused,
                  count(*) AS n
           FROM feedback WHERE campaign_id = ANY($1) GROUP BY 1, 2""",
        ids,
    ):
        feedback[r["campaign_id"]][r["kind"]] = r["n"]
        if r["kind"] == "hard":
            feedback[r["campaign_id"]]["refused"] = r["refused"]
    sends = await _sends(conn, ids)
    failing = await failing_domains(conn, sorted({r["client_id"] for r in rows}))
    return [
        CampaignRow(
            id=r["id"],
            client_id=r["client_id"],
            name=r["name"],
            kind=r["kind"],
            status=r["status"],
            status_reason=r["reason"],
            created_at=r["created_at"],
            route=r["relays"],
            counts=counts[r["id"]],
            feedback=feedback[r["id"]],
            sends=tuple(sends[r["id"]]),
            waiting=_waiting(r),
            failing_domain=failing.get(r["client_id"]),
        )
        for r in rows
    ]


async def failing_domains(conn: Conn, client_ids: list[str]) -> dict[str, str]:
    """`DOMAIN (DMARC p=POLICY)` of each of these clients whose last domain check failed."""
    rows = await conn.fetch(
        """SELECT client_id, result->>'domain' AS domain,
                  result->'dmarc'->>'policy' AS policy
           FROM client_domains WHERE verdict = 'fail' AND client_id = ANY($1)""",
        client_ids,
    )
    return {r["client_id"]: f"{r['domain']} (DMARC p={r['policy']})" for r in rows}


async def domain_verdicts(conn: Conn) -> dict[str, str]:
    """Each checked client's last sending-domain verdict."""
    rows = await conn.fetch(
        "SELECT client_id, verdict FROM client_domains WHERE verdict IS NOT NULL"
    )
    return {r["client_id"]: r["verdict"] for r in rows}


async def _sends(conn: Conn, ids: list[int]) -> dict[int, list[int]]:
    """Accepted first messages of each campaign per bucket of BUCKET_SECONDS, oldest
    first."""
    sends: dict[int, list[int]] = {i: [0] * BUCKETS for i in ids}
    # Bucket 0 is the newest. `recent_sends` holds a count per recorded chunk: a few
    # hundred rows, where the invitations themselves would be visited one by one.
    for r in await conn.fetch(
        """SELECT campaign_id,
                  floor(extract(epoch FROM now() - at)::float8 / $2::float8)::int AS ago,
                  sum(sent) AS n
           FROM recent_sends
           WHERE campaign_id = ANY($1)
             AND at > now() - make_interval(secs => $2::float8 * $3::int)
           GROUP BY 1, 2""",
        ids,
        float(BUCKET_SECONDS),
        BUCKETS,
    ):
        if 0 <= r["ago"] < BUCKETS:
            sends[r["campaign_id"]][BUCKETS - 1 - r["ago"]] = r["n"]
    return sends


def _waiting(r: Record) -> str | None:
    """What a campaign of `overview` waits for in its field period, if it does."""
    return ScheduleReport.at(
        r["status"],
        r["now"],
        start_at=r["start_at"],
        close_at=r["close_at"],
        window=r["send_window"],
        per_day=r["per_day"],
        waiting_until=r["waiting_until"],
    ).waiting_line()


async def campaign_statuses(conn: Conn) -> dict[str, int]:
    """How many campaigns the ledger holds in each status."""
    rows = await conn.fetch("SELECT status, count(*) AS n FROM campaigns GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def due_invitations(conn: Conn) -> int:
    """Invitations of running campaigns that a worker should be sending now: pending, or
    deferred and due (read through the index of open invitations)."""
    due: int = await conn.fetchval(
        """SELECT count(*) FROM invitations i JOIN campaigns c ON c.id = i.campaign_id
           WHERE c.status = 'running' AND i.state IN ('pending', 'deferred')
             AND (i.next_attempt_at IS NULL OR i.next_attempt_at <= now())"""
    )
    return due
