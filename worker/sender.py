"""Sending one slice of a campaign: claim, check opt-outs, compose, SMTP, record, log.

The slice is worked through in chunks of CHUNK_SIZE invitations, one at a time per worker
process from opt-out check to recorded outcome, so the check for a message runs at most
one chunk before it goes on the wire, and a crash leaves at most one chunk in the
ambiguous `sending` state.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import asyncpg
import structlog
from asyncpg.transaction import Transaction
from redis.asyncio import Redis

from worker import (
    addresses,
    compose,
    feedback,
    field_period,
    held_optouts,
    journal,
    ledger,
    message,
    outcomes,
    pacing,
    queue,
    records,
    suppression,
)
from worker.db import DB_ERRORS, Conn
from worker.errors import (
    AmbiguousSmtpError,
    NotStarted,
    PermanentSmtpError,
    RelayTrouble,
    SmtpError,
    SuppressionUnavailable,
    TemplateMissing,
    TemplateProblem,
    TransientSmtpError,
    WorkerStopping,
)
from worker.journal import Journal
from worker.metrics import WorkerMetrics
from worker.outcomes import enhanced_status
from worker.ratelimit import RateLimiter
from worker.relays import Relays
from worker.settings import Settings
from worker.states import decision_event

log = structlog.get_logger("worker.sender")


@dataclass(frozen=True)
class Sender:
    """What a worker process sends with, fixed at start-up: the database pool, the relays
    (an SMTP pool each), the composer (templates and keys), the settings, its id and send
    journal, the Redis that holds opt-outs not yet recorded, and the shared rate limiter if
    SEND_RATE is set."""

    pool: asyncpg.Pool
    relays: Relays
    composer: compose.Composer
    settings: Settings
    worker_id: str
    journal: Journal
    redis: Redis
    policy: feedback.Policy = field(default_factory=feedback.Policy)
    # CONTACT_CAP as (K, window), read once at start-up; None: no cap.
    contact_cap: tuple[int, timedelta] | None = None
    limiter: RateLimiter | None = None
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)


@dataclass
class RunState:
    """What changes while a worker process sends; one per process, shared by its slices."""

    # Set on SIGTERM: finish the chunk in flight, claim nothing more.
    stopping: bool = False
    # Consecutive chunks the SMTP server pushed back on (421, mostly 4xx): slows us down.
    pushback: int = 0
    # One chunk at a time per process goes from opt-out check to recorded outcome, so at
    # most CHUNK_SIZE invitations are ever `sending` here (a crash leaves no more
    # `unknown`), and each check stays next to its send.
    window: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Outcomes of the last chunk whose write failed (the database went away): written
    # before the next chunk opens the journal, which still holds their marks till then.
    unrecorded: list[records.Outcome] = field(default_factory=list)


@dataclass(frozen=True)
class SliceResult:
    """What a slice did, and when it should run again for its deferred invitations."""

    counts: dict[str, int]
    retry_at: datetime | None


async def send_slice(
    sender: Sender,
    state: RunState,
    campaign_id: int,
    first_id: int,
    last_id: int,
    *,
    job_id: str | None,
) -> SliceResult:
    """Send every due invitation of the campaign with an id in `[first_id, last_id]`,
    with the worker process's `sender` and `state`.

    Safe to run twice or concurrently: claims on the ledger decide who sends what. Raises
    SuppressionUnavailable (having sent nothing more) when the opt-out check cannot run,
    and TemplateMissing (having changed nothing more) when the campaign's template is not
    on this worker.
    """
    totals: dict[str, int] = {}
    async with sender.pool.acquire() as conn:
        campaign = await ledger.load_campaign(conn, campaign_id)
        if campaign is None:
            log.warning("campaign.missing", campaign_id=campaign_id, job_id=job_id)
            return SliceResult(totals, None)
        bound = log.bind(campaign_id=campaign.id, client_id=campaign.client_id, job_id=job_id)
        waiting: datetime | None = None
        period = await field_period.Period.of(conn, campaign, first_id, last_id)
        if period is not None and period.closed(datetime.now(UTC)):
            await _close(conn, campaign, bound)
            return SliceResult(totals, None)
        while campaign.status == "running" and not state.stopping:
            if sender.relays.choose(campaign.relays) is None:
                # Every relay of the client's route is in trouble: the slice comes back
                # when one is probed next; nothing is claimed meanwhile.
                waiting = sender.relays.resume_at(campaign.relays)
                break
            pause = pacing.pause_after_pushback(sender.settings.retry_base_seconds, state.pushback)
            await asyncio.sleep(pause)
            done = await _claim_and_send(
                sender, state, conn, campaign, (first_id, last_id), bound, period
            )
            if done is None:
                break
            state.pushback = state.pushback + 1 if pacing.pushed_back(done) else 0
            for o in done:
                totals[o.state] = totals.get(o.state, 0) + 1
        if state.stopping:
            raise WorkerStopping("worker stopping; the slice goes back to the queue")
        retry_at = waiting or await ledger.next_retry_at(conn, campaign.id, first_id, last_id)
        if period is not None and waiting is None:
            # The window, the day's quota and the close decide when it may send again.
            retry_at = await period.retry_at(conn, first_id, last_id, retry_at)
        finished = await ledger.complete_if_done(conn, campaign.id)
        if finished:
            await log_completion(conn, campaign)
    return SliceResult(totals, retry_at)


async def _claim_and_send(
    sender: Sender,
    state: RunState,
    conn: Conn,
    campaign: records.Campaign,
    ids: tuple[int, int],
    bound: Any,
    period: field_period.Period | None,
) -> list[records.Outcome] | None:
    """Claim, check, mark, send and record one chunk of the range `ids`; None when there is
    nothing (more) to do now (the range is done, the campaign stopped, its field period
    lets nothing go, its template failed). A template not on this worker gives the claim
    back and raises TemplateMissing.

    The claim is a set of row locks in a transaction that ends, durably, when the chunk
    is marked `sending`; a failure before that (the opt-out check above all) rolls it
    back, and nothing was written or sent.
    """
    tx = conn.transaction()
    await tx.start()
    chunk = await _claim(sender, conn, tx, campaign, ids, bound, period)
    if chunk is None:
        return None
    claimed, claimed_at, prepared = chunk
    async with state.window:
        try:
            await _record_left_over(sender, state)
            started = await _check_and_start(sender, conn, campaign, claimed, prepared, period)
        except BaseException:
            await _abandon(tx)
            raise
        if started is None:
            # Paused, cancelled or closed while this chunk waited for its turn.
            await tx.rollback()
            return None
        await tx.commit()
        early, ready = started
        if ready:
            sender.journal.committed()
        inv_by_id = {inv.id: inv for inv in claimed}
        for o in early:
            _log_decision(bound, inv_by_id, o)
        done = await _send_all(sender, campaign, ready, claimed_at)
        try:
            await ledger.record(conn, done, sender.worker_id)
        except BaseException:
            # The journal keeps these marks until the outcomes are written: no next chunk
            # opens it before they are (or reconcile settles them from it).
            state.unrecorded = done
            raise
    await _after_chunk(sender, conn, campaign, bound, inv_by_id, early, done)
    return early + done


async def _send_all(
    sender: Sender,
    campaign: records.Campaign,
    ready: list[tuple[str, compose.Prepared]],
    claimed_at: float,
) -> list[records.Outcome]:
    """Send a started chunk's messages, all at once; their outcomes, with the relay
    trouble they showed taken out."""
    metrics = sender.metrics
    metrics.in_flight += len(ready)
    try:
        done = list(
            await asyncio.gather(
                *(_deliver(sender, campaign.relays, r, p, claimed_at) for r, p in ready)
            )
        )
    finally:
        metrics.in_flight -= len(ready)
    return _relay_troubles(sender, campaign.relays, done)


async def _claim(
    sender: Sender,
    conn: Conn,
    tx: Transaction,
    campaign: records.Campaign,
    ids: tuple[int, int],
    bound: Any,
    period: field_period.Period | None,
) -> tuple[list[records.Invitation], float, list[compose.Prepared | records.Outcome]] | None:
    """Claim a chunk of the range `ids` in `tx` (in the zones whose window is open, within
    the day's quota) and compose its messages: the invitations, when they were claimed,
    and each one's message (or its early outcome); None, `tx` rolled back, when there is
    nothing to claim or the template failed the campaign. A template not on this worker
    rolls back and raises TemplateMissing."""
    try:
        zones, limit = None, sender.settings.chunk_size
        if period is not None:
            zones, limit = await period.admit(conn, limit)
        claimed = (
            await ledger.claim(
                conn,
                campaign_id=campaign.id,
                first_id=ids[0],
                last_id=ids[1],
                limit=limit,
                zones=zones,
                client_zone=campaign.timezone,
            )
            if limit
            else []
        )
        if not claimed:
            await tx.rollback()
            return None
        claimed_at = time.monotonic()
        now = datetime.now(UTC).replace(microsecond=0)
        # Rendering needs no window: it overlaps with other slices' database and SMTP waits.
        # Messages of people the check then suppresses are simply dropped.
        prepared = [compose.prepare(sender.composer, campaign, inv, now) for inv in claimed]
        return claimed, claimed_at, prepared
    except TemplateMissing as e:
        # A deployment that has not reached this worker yet: the template is no reason to
        # fail anything, the slice is tried again later.
        await tx.rollback()
        bound.warning("template.missing", template=campaign.template, detail=str(e))
        raise
    except TemplateProblem as e:
        await tx.rollback()
        if await ledger.fail_campaign(conn, campaign.id, f"template: {e}"):
            bound.error("campaign.failed", reason=f"template: {e}")
        return None
    except BaseException:
        await _abandon(tx)
        raise


async def _close(conn: Conn, campaign: records.Campaign, bound: Any) -> None:
    """The campaign's close came: what was not sent expires, and it completes (logged)."""
    if await ledger.close_due(conn, campaign.id):
        bound.info("campaign.closed", close_at=campaign.close_at)
        await log_completion(conn, campaign)


async def _after_chunk(
    sender: Sender,
    conn: Conn,
    campaign: records.Campaign,
    bound: Any,
    inv_by_id: dict[int, records.Invitation],
    early: list[records.Outcome],
    done: list[records.Outcome],
) -> None:
    """Count and log a recorded chunk's decisions; a hard bounce may pause the campaign."""
    metrics = sender.metrics
    metrics.decisions(early, smtp=False)
    metrics.decisions(done, smtp=True)
    for o in done:
        if o.relay is not None and o.state == "deferred":
            metrics.deferred(o.relay, o.reason or "none")
        _log_decision(bound, inv_by_id, o)
    if any(o.reason == "hard_bounce" for o in done):
        # A 5xx at send time counts like a bounce that came back: it may pause the campaign.
        pause = await feedback.guard(conn, campaign.id, sender.policy)
        if pause is not None:
            bound.warning("campaign.paused", reason=pause.reason, rate=pause.rate, sent=pause.sent)


async def _record_left_over(sender: Sender, state: RunState) -> None:
    """Write the outcomes of the last chunk whose write failed, on a connection of their
    own (committed whatever this chunk's transaction does); raises a database error when
    that still cannot be done, and then this chunk must not start."""
    if not state.unrecorded:
        return
    async with sender.pool.acquire() as conn:
        await ledger.record(conn, state.unrecorded, sender.worker_id)
    state.unrecorded = []


async def _abandon(tx: Transaction) -> None:
    """Roll the claim back after an error; if the database is gone, so are the locks."""
    with contextlib.suppress(*DB_ERRORS):
        await tx.rollback()


async def _check_and_start(
    sender: Sender,
    conn: Conn,
    campaign: records.Campaign,
    claimed: list[records.Invitation],
    prepared: list[compose.Prepared | records.Outcome],
    period: field_period.Period | None,
) -> tuple[list[records.Outcome], list[tuple[str, compose.Prepared]]] | None:
    """Run the opt-out check for a claimed chunk, choose each message's relay (whose rate
    permit it takes, and whose session it waits for unless another relay's frees first:
    `Relays.place`) and mark the chunk (counted on the day of a paced campaign); None if
    the campaign stopped. A message no relay of the route can take now is left as it was
    (claimed again when one can).

    Raises SuppressionUnavailable when the check cannot run: the caller rolls back.
    """
    routed = {inv.id: sender.relays.choose(campaign.relays) for inv in claimed}
    # Wait for permits before the opt-out check, so the check stays next to the send.
    if sender.limiter is not None:
        await sender.limiter.acquire(len(claimed))
    await sender.relays.acquire(r for r in routed.values() if r is not None)
    scope = suppression.Scope(campaign.kind, campaign.client_id)
    hits = await _suppression_hits(sender, conn, campaign, scope, claimed)
    early: list[records.Outcome] = []
    ready: dict[int, compose.Prepared] = {}
    for inv, item in zip(claimed, prepared, strict=True):
        reason = suppression.decide(inv.email_hash, hits)
        if reason is not None:
            early.append(records.Outcome(inv.id, "suppressed", reason=reason))
        elif isinstance(item, compose.Prepared):
            if routed[inv.id] is not None:
                ready[inv.id] = item
        else:
            early.append(item)
    early += await _over_contact_cap(sender, conn, campaign, ready)
    # Before the database's lease begins: the journal's deadline is never later than it.
    leased_at = time.monotonic()
    started = await ledger.start_chunk(
        conn,
        campaign.id,
        early,
        list(ready),
        worker_id=sender.worker_id,
        lease_seconds=sender.settings.claim_lease_seconds,
    )
    if started is None:
        return None
    if period is not None:
        await period.count(conn, len(started))
    if started:
        # Before the `sending` mark commits: no chunk goes on the wire without a journal.
        await sender.journal.open(
            started, lease_seconds=sender.settings.claim_lease_seconds, leased_at=leased_at
        )
    return early, [(routed[i] or "", ready[i]) for i in started]


async def _suppression_hits(
    sender: Sender,
    conn: Conn,
    campaign: records.Campaign,
    scope: suppression.Scope,
    claimed: list[records.Invitation],
) -> dict[bytes, frozenset[str]]:
    """The lists that forbid each claimed address: Postgres's, and the clicks Redis holds.

    Raises SuppressionUnavailable when either cannot be read.
    """
    hashes = [inv.email_hash for inv in claimed]
    # Clicks accepted while Postgres was down, read before Postgres: a click the job moves
    # from Redis to Postgres meanwhile commits there before it leaves Redis.
    try:
        held = await held_optouts.held(
            sender.redis, campaign.client_token_id, campaign.kind, hashes
        )
    except queue.ERRORS as e:
        raise SuppressionUnavailable(f"held opt-outs unreadable: {type(e).__name__}") from e
    hits = await suppression.lookup(
        conn,
        scope,
        hashes,
        timeout=sender.settings.suppression_timeout_seconds,
        followed_up=[inv.parent_id for inv in claimed if inv.parent_id is not None],
    )
    for email_hash, held_reason in held.items():
        hits[email_hash] = hits.get(email_hash, frozenset()) | {held_reason}
    return hits


async def _over_contact_cap(
    sender: Sender, conn: Conn, campaign: records.Campaign, ready: dict[int, compose.Prepared]
) -> list[records.Outcome]:
    """Take the first survey invitations over CONTACT_CAP out of `ready`; their outcomes.
    Reminders and marketing mail are not counted."""
    limit = sender.contact_cap
    if limit is None or campaign.kind != "survey":
        return []
    firsts = {i: p.invitation.email_hash for i, p in ready.items() if p.invitation.round == 0}
    over = await suppression.count_contacts(
        conn,
        firsts,
        cap=limit[0],
        window=limit[1],
        timeout=sender.settings.suppression_timeout_seconds,
    )
    for invitation_id in over:
        del ready[invitation_id]
    return [records.Outcome(i, "suppressed", reason="contact_cap") for i in over]


async def _deliver(
    sender: Sender,
    route: list[str] | None,
    relay: str,
    p: compose.Prepared,
    claimed_at: float,
) -> records.Outcome:
    inv = p.invitation
    relay, place = await sender.relays.place(relay, route)
    try:
        code = await sender.relays.send(
            relay,
            place,
            sender=p.envelope_sender,
            recipient=p.recipient,
            message=p.data,
            before_content=partial(sender.journal.start, inv.id),
        )
    except NotStarted:
        # Reconcile took it back, or the journal could not be written: none of it left.
        return records.Outcome(inv.id, "pending", reason="not_started", started=False)
    except RelayTrouble as e:
        return _waiting_for_relay(sender, route, inv.id, e)
    except TransientSmtpError as e:
        return _retry_later(sender.settings, inv, e, relay)
    except PermanentSmtpError as e:
        return _refused(inv.id, e, relay)
    except AmbiguousSmtpError as e:
        return records.Outcome(inv.id, "unknown", reason="no_reply_after_data", **_cause(e, relay))
    sender.journal.accepted(inv.id)
    sender.metrics.send_latency.observe(time.monotonic() - claimed_at)
    return records.Outcome(inv.id, "sent", smtp_code=code, message_id=p.message_id, relay=relay)


def _waiting_for_relay(
    sender: Sender, route: list[str] | None, invitation_id: int, e: RelayTrouble
) -> records.Outcome:
    """A message its relay stopped: no attempt counts, it waits for a relay of the route."""
    return records.Outcome(
        invitation_id,
        "deferred",
        reason=e.reason,
        next_attempt_at=sender.relays.resume_at(route),
        started=False,
        **_cause(e, e.relay),
    )


def _retry_later(
    settings: Settings, inv: records.Invitation, e: TransientSmtpError, relay: str
) -> records.Outcome:
    """A message deferred for the recipient's sake: retried with backoff until
    RETRY_HORIZON after its first attempt, then `failed` (`retry_horizon`)."""
    now = datetime.now(UTC)
    if now - (inv.first_attempt_at or now) >= settings.retry_horizon:
        return records.Outcome(inv.id, "failed", reason="retry_horizon", **_cause(e, relay))
    delay = pacing.backoff(
        settings.retry_base_seconds,
        inv.attempts + 1,
        settings.retry_max_delay.total_seconds(),
    )
    return records.Outcome(
        inv.id, "deferred", reason="smtp_transient", next_attempt_at=now + delay, **_cause(e, relay)
    )


def _refused(invitation_id: int, e: PermanentSmtpError, relay: str) -> records.Outcome:
    if e.code is None:
        # Refused before any server reply: e.g. an SMTPUTF8 address to a plain server.
        return records.Outcome(invitation_id, "failed", reason=f"undeliverable: {e}", relay=relay)
    bounce = outcomes.is_hard_bounce(e.code, str(e))
    reason = "hard_bounce" if bounce else "smtp_rejected"
    return records.Outcome(invitation_id, "failed", reason=reason, **_cause(e, relay))


def _cause(e: SmtpError, relay: str) -> dict[str, Any]:
    """The outcome's fields that say why: the relay, the reply's code, enhanced status and
    text, or the error when no reply came."""
    fields: dict[str, Any] = {"relay": relay, "smtp_code": e.code}
    if e.reply is not None:
        fields["smtp_status"] = enhanced_status(e.reply)
        fields["smtp_reply"] = e.reply
    elif isinstance(e, RelayTrouble) and e.error is not None:
        fields["error"] = e.error
    else:
        fields["error"] = f"{type(e).__name__}: {e}"
    return fields


def _relay_troubles(
    sender: Sender, route: list[str] | None, done: list[records.Outcome]
) -> list[records.Outcome]:
    """The chunk's outcomes, once the relay trouble it showed is taken out of them: a relay
    that deferred most of its share with the same 4xx is throttling (marked in trouble),
    and what a relay in trouble deferred waits for a relay, with no attempt counted."""
    for relay, sample in pacing.throttled_relays(done).items():
        sender.relays.trouble(
            RelayTrouble(
                "throttled",
                relay=relay,
                code=sample.smtp_code,
                status=sample.smtp_status,
                reply=sample.smtp_reply,
            )
        )
    settled = []
    for o in done:
        health = sender.relays.health(o.relay) if o.relay is not None else None
        if o.state == "deferred" and o.started and health is not None and health.reason:
            o = replace(
                o,
                reason=health.reason,
                started=False,
                next_attempt_at=sender.relays.resume_at(route),
            )
        settled.append(o)
    return settled


def _log_decision(
    bound: Any, inv_by_id: dict[int, records.Invitation], outcome: records.Outcome
) -> None:
    inv = inv_by_id[outcome.invitation_id]
    fields: dict[str, Any] = {
        "invitation_id": outcome.invitation_id,
        "recipient": addresses.recipient_id(inv.email_hash),
    }
    if outcome.reason:
        fields["reason"] = outcome.reason
    for name in ("relay", "smtp_code", "smtp_status", "smtp_reply", "error"):
        value = getattr(outcome, name)
        if value is not None:
            fields[name] = value
    if outcome.state == "deferred" and outcome.started:
        fields["attempt"] = inv.attempts + 1
    if inv.round:
        fields["round"] = inv.round
    level = "warning" if outcome.state in ("failed", "unknown") else "info"
    getattr(bound, level)(decision_event(outcome.state, inv.round), **fields)


async def log_completion(conn: Conn, campaign: records.Campaign) -> None:
    """The `campaign.completed` summary line: counts per state and the average rate."""
    states = await ledger.counts(conn, campaign.id)
    elapsed = await ledger.run_seconds(conn, campaign.id)
    total = sum(states.values())
    log.info(
        "campaign.completed",
        campaign_id=campaign.id,
        client_id=campaign.client_id,
        total=total,
        counts=states,
        reasons=await ledger.reason_counts(conn, campaign.id),
        seconds=round(elapsed or 0, 3),
        rate=round(total / elapsed, 1) if elapsed else None,
    )


async def complete_finished(conn: Conn) -> int:
    """Complete the running campaigns with nothing left open, logging each; how many."""
    completed = 0
    for campaign_id in await ledger.finished_running_campaigns(conn):
        campaign = await ledger.load_campaign(conn, campaign_id)
        if campaign is not None and await ledger.complete_if_done(conn, campaign_id):
            await log_completion(conn, campaign)
            completed += 1
    return completed


async def settle_lost(
    conn: Conn, redis: Redis, worker_id: str, expired: list[records.Expired], *, resend: bool
) -> list[records.Outcome]:
    """Settle what a lost worker left `sending` from its send journal and record it: accepted
    messages `sent`, unstarted ones `pending`, those on the wire `unknown` (`pending` with
    `resend`). Without the journal (Redis away) every one counts as on the wire."""
    try:
        marks = await journal.take_back(redis, worker_id)
    except queue.ERRORS:
        marks = None
    settled = [
        journal.settle(
            e,
            (marks or {}).get(e.id),
            message_id=message.message_id_for(e.id, e.sender_email.rpartition("@")[2]),
            resend=resend,
        )
        for e in expired
    ]
    await ledger.record(conn, settled, worker_id)
    return settled
