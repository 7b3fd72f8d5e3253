"""The arq jobs. Each takes ids, never payloads (but for the reports `record_feedback`
carries), and may run more than once: the ledger's conditional updates make every effect
happen once however often a job runs."""

from __future__ import annotations

import gc
import os
import secrets
import socket
from datetime import UTC, datetime
from typing import Any, TypedDict
from wsgiref.simple_server import WSGIServer

import asyncpg
import structlog
from arq import Retry
from arq.connections import ArqRedis
from arq.constants import default_queue_name

from worker import (
    __version__,
    addresses,
    db,
    feedback,
    held_optouts,
    journal,
    ledger,
    metrics,
    optouts,
    privacy,
    queue,
    records,
    relay_config,
    sender,
    sending_domain,
    tokens,
)
from worker.compose import Composer
from worker.db import Conn
from worker.errors import SuppressionUnavailable, TemplateMissing, WorkerStopping
from worker.ratelimit import RateLimiter
from worker.relays import Relays
from worker.render import TemplateStore
from worker.settings import Settings
from worker.states import decision_event

log = structlog.get_logger("worker.jobs")
# Jobs one worker process runs at once; each holds a database connection while it runs.
CONCURRENT_JOBS = 10
# Allocations between collections of the youngest generation (Python's default is 700).
GC_THRESHOLD = 20_000


class Context(TypedDict):
    """arq's ctx, as filled by `startup`."""

    redis: ArqRedis
    job_id: str
    job_try: int
    score: int  # when the job was due, ms since the epoch
    settings: Settings
    database_url: str
    redis_url: str
    pool: asyncpg.Pool
    relays: Relays
    sender: sender.Sender
    run_state: sender.RunState
    metrics: metrics.WorkerMetrics
    metrics_server: WSGIServer | None


async def startup(ctx: Context) -> None:
    """Open the database pool and the SMTP pool once per worker process."""
    settings = ctx["settings"]
    ctx["pool"] = await db.create_pool(
        ctx["database_url"],
        max_size=CONCURRENT_JOBS + 2,
        synchronous_commit=False,
        pool_mode=settings.database_pool_mode,
    )
    for name in settings.ignored_settings():
        log.warning("setting.ignored", setting=name)
    ctx["relays"] = Relays(
        relay_config.relays(settings),
        ctx["redis"],
        probe_base=settings.retry_base_seconds,
        metrics=ctx["metrics"],
    )
    # A relay in trouble does not stop the start: its mail waits until a probe passes.
    await ctx["relays"].check()
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    ctx["sender"] = sender.Sender(
        pool=ctx["pool"],
        relays=ctx["relays"],
        composer=Composer.from_settings(settings, TemplateStore(settings.templates_dir)),
        settings=settings,
        worker_id=worker_id,
        journal=journal.Journal(ctx["redis_url"], worker_id),
        redis=ctx["redis"],
        policy=feedback.Policy.from_settings(settings),
        contact_cap=settings.contact_limit(),
        limiter=RateLimiter(ctx["redis"], settings.send_rate) if settings.send_rate else None,
        metrics=ctx["metrics"],
    )
    ctx["run_state"] = sender.RunState()
    ctx["metrics_server"] = None
    if settings.metrics_port is not None:
        registry = metrics.worker_registry(ctx["metrics"], settings)
        ctx["metrics_server"] = metrics.serve(registry, settings.metrics_port)
    # Sending allocates many short-lived objects (tasks, replies, rows) and few cycles:
    # leave what start-up built out of every collection, and collect the young less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    log.info(
        "worker.started",
        version=__version__,
        worker_id=worker_id,
        queues=[default_queue_name],
        relays=ctx["relays"].states(),
    )


async def shutdown(ctx: Context) -> None:
    """Close the SMTP connections and the database pool: whatever `startup` opened, also
    when it failed half-way (arq runs this after a failed start too, and the start's own
    error is the one to report)."""
    if "relays" in ctx:
        await ctx["relays"].close()
    if "sender" in ctx:
        ctx["sender"].journal.close()
    if "pool" in ctx:
        await ctx["pool"].close()
    server = ctx.get("metrics_server")
    if server is not None:
        metrics.stop(server)
    if "sender" in ctx:
        log.info("worker.stopped", worker_id=ctx["sender"].worker_id)


def _malformed(ctx: Context, *ids: object) -> bool:
    """True (and logged) when a job's arguments are not the ids it takes.

    Platforms enqueue jobs directly; a bad payload must end that job, not crash or loop.
    """
    if all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in ids):
        return False
    log.error("job.malformed", job_id=ctx["job_id"], arguments=[type(i).__name__ for i in ids])
    return True


def _retry_delay(ctx: Context) -> float:
    return float(min(2 ** ctx["job_try"], 60))


async def launch_campaign(ctx: Context, campaign_id: int) -> dict[str, Any]:
    """Start (or restart) a running campaign: enqueue `send_batch` jobs for its first
    SLICES_IN_FLIGHT slices of open invitations; each finished slice enqueues the next.

    Running it twice only enqueues slices that find nothing left to claim; it is also how
    `reconcile`, `resume` and `resend-unknown` restart a campaign whose jobs were lost.
    A scheduled campaign (`launch --start-at`) whose start came runs from now on.
    """
    if _malformed(ctx, campaign_id):
        return {"slices": 0}
    settings = ctx["settings"]
    try:
        async with ctx["pool"].acquire() as conn:
            if await ledger.start_scheduled(conn, campaign_id):
                log.info("campaign.started", campaign_id=campaign_id, job_id=ctx["job_id"])
            campaign = await ledger.load_campaign(conn, campaign_id)
            if campaign is None or campaign.status != "running":
                log.warning(
                    "campaign.not_running",
                    campaign_id=campaign_id,
                    status=campaign.status if campaign else None,
                )
                return {"slices": 0}
            ranges = await ledger.dispatch(
                conn,
                campaign_id,
                slice_size=settings.slice_size,
                slices=settings.slices_in_flight,
                restart=True,
            )
            total = sum((await ledger.counts(conn, campaign_id)).values())
    except db.DB_ERRORS as e:
        raise Retry(defer=_retry_delay(ctx)) from e
    await queue.enqueue_slices(ctx["redis"], campaign_id, ranges)
    log.info(
        "campaign.launched",
        campaign_id=campaign_id,
        client_id=campaign.client_id,
        total=total,
        slices=len(ranges),
        job_id=ctx["job_id"],
    )
    if not ranges:
        async with ctx["pool"].acquire() as conn:
            if await ledger.complete_if_done(conn, campaign_id):
                await sender.log_completion(conn, campaign)
    return {"slices": len(ranges)}


async def send_batch(ctx: Context, campaign_id: int, first_id: int, last_id: int) -> dict[str, Any]:
    """Send the due invitations of one slice `[first_id, last_id]` of a campaign, then
    enqueue the campaign's next slice.

    Safe to run twice or on two workers at once: invitations are claimed on the ledger,
    and the next slice is taken from the campaign's dispatch cursor under a row lock.
    If the opt-out check or the database fails, or the campaign's template is not on this
    worker, nothing more is sent and the job retries.
    Deferred invitations bring the slice back when the first of them is due.
    """
    if _malformed(ctx, campaign_id, first_id, last_id):
        return {"counts": {}}
    ctx["metrics"].waited(ctx["score"])
    counts = await _send_range(ctx, campaign_id, first_id, last_id)
    try:
        async with ctx["pool"].acquire() as conn:
            ranges = await ledger.dispatch(
                conn,
                campaign_id,
                slice_size=ctx["settings"].slice_size,
                slices=1,
                restart=False,
            )
    except db.DB_ERRORS as e:
        # The slice is done; the retry finds nothing to claim and enqueues the next one.
        raise Retry(defer=_retry_delay(ctx)) from e
    await queue.enqueue_slices(ctx["redis"], campaign_id, ranges)
    return {"counts": counts}


async def _send_range(
    ctx: Context, campaign_id: int, first_id: int, last_id: int
) -> dict[str, int]:
    """Send the due invitations with ids in `[first_id, last_id]`; their counts per state."""
    try:
        result = await sender.send_slice(
            ctx["sender"], ctx["run_state"], campaign_id, first_id, last_id, job_id=ctx["job_id"]
        )
    except WorkerStopping as e:
        raise Retry(defer=1) from e
    except (SuppressionUnavailable, TemplateMissing, *db.DB_ERRORS, *queue.ERRORS) as e:
        # The opt-out check, the ledger or the send journal could not be reached, or the
        # campaign's template has not reached this worker yet.
        log.warning(
            "batch.retry", campaign_id=campaign_id, reason=type(e).__name__, job_id=ctx["job_id"]
        )
        raise Retry(defer=_retry_delay(ctx)) from e
    if result.retry_at is not None:
        await queue.enqueue_slice_retry(
            ctx["redis"],
            campaign_id,
            first_id,
            last_id,
            at=max(result.retry_at, datetime.now(UTC)),
        )
    log.info(
        "batch.done",
        campaign_id=campaign_id,
        first_id=first_id,
        last_id=last_id,
        counts=result.counts,
        job_id=ctx["job_id"],
    )
    return result.counts


async def send_invitation(ctx: Context, invitation_id: int) -> dict[str, Any]:
    """Send one invitation (one-off and test sends); a no-op once it reached a final state."""
    if _malformed(ctx, invitation_id):
        return {"counts": {}}
    async with ctx["pool"].acquire() as conn:
        campaign_id = await ledger.campaign_of(conn, invitation_id)
    if campaign_id is None:
        log.warning("invitation.missing", invitation_id=invitation_id, job_id=ctx["job_id"])
        return {"counts": {}}
    return {"counts": await _send_range(ctx, campaign_id, invitation_id, invitation_id)}


async def record_opt_out(ctx: Context, token: str, source: str) -> dict[str, Any]:
    """Record the opt-out an unsubscribe token asks for (clicks the web app could not
    store at once), then drop the click the web app held in Redis for the send-time check.
    Idempotent: an opt-out already on the list is left as it is."""
    if not isinstance(token, str) or not isinstance(source, str):
        log.error("job.malformed", job_id=ctx["job_id"])
        return {"recorded": False}
    claims = tokens.verify(ctx["settings"].signing_keys(), token)
    if claims is None:
        log.warning("opt_out.invalid_token", source=source, job_id=ctx["job_id"])
        return {"recorded": False}
    try:
        async with ctx["pool"].acquire() as conn:
            scopes = await optouts.add_from_token(conn, claims, source=source)
    except db.DB_ERRORS as e:
        raise Retry(defer=_retry_delay(ctx)) from e
    # Recorded (or its client is gone): the send-time check reads Postgres from now on.
    await held_optouts.release(ctx["redis"], claims)
    if scopes is None:
        log.warning("opt_out.unknown_client", source=source, job_id=ctx["job_id"])
        return {"recorded": False}
    log.info(
        "opt_out.recorded",
        scope=optouts.scopes_label(scopes),
        source=source,
        recipient=addresses.recipient_id(claims.email_hash),
        job_id=ctx["job_id"],
    )
    return {"recorded": True}


async def record_feedback(ctx: Context, report: dict[str, Any]) -> dict[str, Any]:
    """Record a report of what became of messages we sent (see docs/bounces.md):
    `{"verp": ADDRESS, "message": BASE64}`, a message `survey-worker inbound`
    received at a VERP address, or `{"events": [...]}`, the events of a provider's webhook.

    Idempotent: each invitation gets each kind of feedback once, however often the same
    report arrives. While Postgres is away the job is retried, for days.
    """
    settings = ctx["settings"]
    decoded = feedback.decode_report(report)
    if decoded is None:
        log.error("job.malformed", job_id=ctx["job_id"])
        return {"recorded": 0}
    if decoded.ignored is not None:
        log.info("feedback.ignored", reason=decoded.ignored, source="verp", job_id=ctx["job_id"])
    events = decoded.events
    policy = ctx["sender"].policy
    keys = settings.signing_keys()
    recorded = 0
    try:
        async with ctx["pool"].acquire() as conn:
            for event in events:
                target = await feedback.find(
                    conn, event, keys=keys, bounce_domain=settings.bounce_domain
                )
                if target is None:
                    log.info(
                        "feedback.ignored",
                        reason="not_our_message",
                        kind=event.kind,
                        source=event.source,
                        job_id=ctx["job_id"],
                    )
                    ctx["metrics"].feedback_event(event.kind, event.source, "unmatched")
                    continue
                effect = await feedback.apply(conn, target, event, policy)
                _log_feedback(ctx, target, event, effect)
                recorded += effect.recorded
    except db.DB_ERRORS as e:
        raise Retry(defer=_retry_delay(ctx)) from e
    return {"recorded": recorded}


def _log_feedback(
    ctx: Context, target: feedback.Target, event: feedback.Event, effect: feedback.Effect
) -> None:
    fields: dict[str, Any] = {
        "campaign_id": target.campaign_id,
        "client_id": target.client_id,
        "invitation_id": target.invitation_id,
        "recipient": addresses.recipient_id(target.email_hash),
        "source": event.source,
        "job_id": ctx["job_id"],
    }
    ctx["metrics"].feedback_event(
        event.kind, event.source, "recorded" if effect.recorded else "duplicate"
    )
    if not effect.recorded:
        log.info("feedback.ignored", reason="duplicate", kind=event.kind, **fields)
        return
    if event.kind == "complaint":
        log.warning(
            "feedback.complaint", opted_out=effect.opted_out, listed=effect.listed, **fields
        )
    elif event.kind == "delivered":
        log.info("feedback.delivered", **fields)
    else:
        log.info(
            "feedback.bounce", kind=event.kind, status=event.status, listed=effect.listed, **fields
        )
    if effect.paused is not None:
        log.warning(
            "campaign.paused",
            campaign_id=target.campaign_id,
            client_id=target.client_id,
            reason=effect.paused.reason,
            rate=effect.paused.rate,
            sent=effect.paused.sent,
            job_id=ctx["job_id"],
        )


async def reconcile(ctx: Context) -> dict[str, Any]:
    """Re-drive what Redis lost or a crash left behind; complete finished campaigns.

    Runs as a cron job on every worker (arq lets one run per tick). Invitations a worker
    left `sending` under a lease that ran out are settled from its send journal: accepted
    ones `sent`, unstarted ones `pending`, those on the wire `unknown` (or `pending` with
    UNKNOWN_POLICY=resend); running campaigns with due work that nobody touched for a
    reconcile interval are launched again, and those with reminders due get their rows
    and are launched; scheduled campaigns whose start came are started, and those whose
    close came are closed (in case their jobs were lost); the ledger's claims make all of
    it idempotent.
    """
    settings = ctx["settings"]
    resend = settings.unknown_policy == "resend"
    async with ctx["pool"].acquire() as conn:
        settled = 0
        for worker_id, expired in (await ledger.expired_sending(conn)).items():
            settled += await _settle(ctx, conn, worker_id, expired, resend=resend)
        closed = await ledger.close_due(conn)
        completed = await sender.complete_finished(conn)
        started = await ledger.start_scheduled(conn)
        stalled = await ledger.stalled_campaigns(conn, settings.reconcile_interval_seconds)
        reminded = await ledger.create_due_reminders(conn)
    for campaign_id in closed:
        log.info("campaign.closed", campaign_id=campaign_id, job_id=ctx["job_id"])
    for campaign_id in started:
        await queue.enqueue_launch(ctx["redis"], campaign_id)
        log.info("campaign.started", campaign_id=campaign_id, job_id=ctx["job_id"])
    for campaign_id in stalled:
        await queue.enqueue_launch(ctx["redis"], campaign_id, redrive=True)
        log.warning("campaign.redriven", campaign_id=campaign_id, job_id=ctx["job_id"])
    for campaign_id in reminded:
        await queue.enqueue_launch(ctx["redis"], campaign_id)
        log.info("reminders.due", campaign_id=campaign_id, job_id=ctx["job_id"])
    return {
        "settled": settled,
        "completed": completed + len(closed),
        "started": len(started),
        "redriven": len(stalled),
        "reminded": len(reminded),
    }


async def _settle(
    ctx: Context, conn: Conn, worker_id: str, expired: list[records.Expired], *, resend: bool
) -> int:
    """Settle what a lost worker left `sending`, from its send journal; log each."""
    outcomes = await sender.settle_lost(conn, ctx["redis"], worker_id, expired, resend=resend)
    ctx["metrics"].decisions(outcomes, smtp=False)
    for e, outcome in zip(expired, outcomes, strict=True):
        log.warning(
            decision_event(outcome.state, e.round),
            campaign_id=e.campaign_id,
            client_id=e.client_id,
            invitation_id=e.id,
            reason=outcome.reason or "accepted_before_worker_lost",
            recipient=addresses.recipient_id(e.email_hash),
            job_id=ctx["job_id"],
            **({"round": e.round} if e.round else {}),
        )
    return len(outcomes)


async def purge(ctx: Context) -> dict[str, Any]:
    """Retention (daily cron): delete the invitations of campaigns that ended more than
    RETENTION_DAYS ago. Running it again deletes nothing more; opt-outs are never touched.
    A run that fails (database down) is not retried: the next day's run does its work."""
    async with ctx["pool"].acquire() as conn:
        report = await privacy.purge(
            conn,
            retention_days=ctx["settings"].retention_days,
            counts_days=ctx["settings"].counts_days(),
        )
    return {
        "campaigns": report.campaigns,
        "invitations": report.invitations,
        "counts": report.counts,
    }


async def check_sending_domains(ctx: Context) -> dict[str, Any]:
    """The daily re-check (cron): the sending domain of every client with a campaign in the
    last 90 days is checked again and kept; a verdict other than the last one is logged
    (`client.domain_changed`), and /metrics shows it (survey_worker_client_domain_ok).
    Running it twice checks twice and changes nothing else."""
    async with ctx["pool"].acquire() as conn:
        clients = await sending_domain.recent_clients(conn)
    verdicts: dict[str, int] = {}
    for client_id in clients:
        # One connection per client, not held across the others' lookups.
        async with ctx["pool"].acquire() as conn:
            result = await sending_domain.refresh(conn, ctx["settings"], client_id)
        verdicts[result["verdict"]] = verdicts.get(result["verdict"], 0) + 1
    return {"checked": len(clients), **verdicts}
