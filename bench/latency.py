"""Per-message latency from the ledger: enqueue (t0) to the recorded send."""

from __future__ import annotations

import asyncpg


async def percentiles(conn: asyncpg.Connection, campaign_id: int, t0: float) -> tuple[float, float]:
    """p50 and p99 of `sent_at - t0` in seconds over the campaign's sent invitations.

    `sent_at` is written when the worker records the outcome, after the sink accepted the
    message: this overstates the latency a little, never understates it.
    """
    row = await conn.fetchrow(
        """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at)::float8),
                  percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at)::float8)
           FROM invitations WHERE campaign_id = $1 AND state = 'sent'""",
        campaign_id,
    )
    if row is None or row[0] is None:
        return 0.0, 0.0
    return row[0] - t0, row[1] - t0
