"""A campaign's life: `launch`, `campaigns` (the list), `status` (and `status --watch`),
`pause`, `resume`, `cancel`, `resend-unknown`, `retry`, `complete` (answered invitations)
and `preview` of a template."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import click
import structlog
from tqdm import tqdm

from worker import (
    campaigns,
    completion,
    durations,
    queue,
    records,
    relay_config,
    schedule,
    sending_domain,
)
from worker.cli.base import Env, _clear_errors, _emit, environment, main, run
from worker.cli.watch import counts_text
from worker.relays import waiting_lines
from worker.render import TemplateStore
from worker.settings import Settings
from worker.states import CAMPAIGN_STATUSES, Action, CampaignStatus


def _duration(_ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    if value is None:
        return None
    try:
        return durations.parse(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=f"--{param.name}".replace("_", "-")) from e


@main.command()
@click.option("--client", "client_id", required=True, help="The client the campaign is for.")
@click.option("--template", required=True, help="Template folder name under templates/.")
@click.option(
    "--recipients",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="CSV with a header row: email, optional locale, any template columns.",
)
@click.option(
    "--kind",
    type=click.Choice(["survey", "marketing"]),
    default="survey",
    show_default=True,
    help="survey: the client's opt-out list applies; marketing: the client's list and the "
    "firm's marketing list.",
)
@click.option("--survey-url", help="Base survey link; each recipient gets a distinct one.")
@click.option("--name", help="Campaign name (default: the file name).")
@click.option(
    "--locale", default="en", show_default=True, help="Locale for recipients without one."
)
@click.option(
    "--idempotency-key",
    help="Launching again with the client's same key returns the first campaign "
    "(retries create nothing twice).",
)
@click.option(
    "--reminders",
    type=click.IntRange(0, campaigns.MAX_REMINDERS),
    default=0,
    show_default=True,
    help="Reminder rounds to those who have not answered (survey campaigns).",
)
@click.option(
    "--reminder-interval",
    callback=_duration,
    help="Time from the first message to round 1, and between rounds: 90s, 12h, 3d, 1w.",
)
@click.option(
    "--start-at",
    metavar="DATETIME",
    help="Start sending then (ISO 8601; without an offset, in the client's time zone); "
    "until then the campaign is scheduled.",
)
@click.option(
    "--close-at",
    metavar="DATETIME",
    help="Send nothing from then on; what was not sent expires and the campaign completes.",
)
@click.option(
    "--window",
    metavar="SPEC",
    help="When messages may start, in each recipient's time zone: DAYS HH:MM-HH:MM, "
    "several joined by ';' (e.g. 'Mon-Fri 09:00-12:00; Mon-Fri 14:00-17:00').",
)
@click.option(
    "--per-day",
    type=int,
    metavar="N",
    help="At most N messages (reminders included) a day in the client's time zone.",
)
@click.option(
    "--allow-unaligned",
    is_flag=True,
    help="Launch even when the client's sending domain fails DMARC through every relay of "
    "its route (`client check` says `fail`); noted in `status`.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def launch(
    client_id: str,
    template: str,
    recipients: Path,
    kind: str,
    survey_url: str | None,
    name: str | None,
    locale: str,
    idempotency_key: str | None,
    reminders: int,
    reminder_interval: timedelta | None,
    start_at: str | None,
    close_at: str | None,
    window: str | None,
    per_day: int | None,
    allow_unaligned: bool,
    as_json: bool,
) -> None:
    """Create a campaign, import its recipients and start sending it (or schedule it),
    unless its client's sending domain fails DMARC (see `client check`)."""
    if not re.fullmatch(r"[a-zA-Z]{2}", locale):
        raise click.BadParameter("a locale is two letters, e.g. en", param_hint="--locale")
    if idempotency_key is not None and not re.fullmatch(r"[\x21-\x7e]{1,200}", idempotency_key):
        raise click.BadParameter(
            "1 to 200 printable ASCII characters, no spaces", param_hint="--idempotency-key"
        )
    request = campaigns.LaunchRequest(
        client_id=client_id,
        template=template,
        kind=kind,
        survey_url=survey_url,
        name=name or campaigns.name_of_file(recipients.name),
        locale=locale.lower(),
        idempotency_key=idempotency_key,
        reminders=reminders,
        reminder_interval=reminder_interval,
        start_at=start_at,
        close_at=close_at,
        window=window,
        per_day=per_day,
    )
    with _clear_errors():
        campaigns.check_request(request)
    # Redis is checked too before anything is imported: a campaign that could not be
    # queued would wait for the next reconcile.
    with environment(secrets=True, redis=True) as env:
        overridden = _check_domain(env, client_id, allow_unaligned=allow_unaligned)
        report = _import(env, request, recipients)
        if overridden is not None and not report.existing:
            _record_override(env, report.campaign_id, overridden)
        _enqueue_launch(
            env,
            report.campaign_id,
            "already existed" if report.existing else "created",
            at=report.start_at,
        )
    _print_launch(report, idempotency_key, as_json=as_json)


def _check_domain(env: Env, client_id: str, *, allow_unaligned: bool) -> dict[str, Any] | None:
    """The client's sending-domain check before anything is imported (kept an hour): a
    `fail` refuses the launch in one line naming the domain, its policy and the fix, unless
    `allow_unaligned`; a `warn` is printed. The check when the launch goes on over a
    `fail`, else None."""
    result = run(env, lambda conn: sending_domain.for_launch(conn, env.settings, client_id))
    if result is None:
        return None
    blocked = sending_domain.blocker(result)
    if blocked is None:
        warned = sending_domain.warning(result)
        if warned:
            click.echo(f"warning: {warned}", err=True)
        return None
    if not allow_unaligned:
        raise click.ClickException(f"{blocked} (or launch with --allow-unaligned)")
    click.echo(f"warning: {blocked}; launching all the same (--allow-unaligned)", err=True)
    return result


def _record_override(env: Env, campaign_id: int, result: dict[str, Any]) -> None:
    """Note (and log) that the campaign was launched over its client's `fail`."""
    run(env, lambda conn: sending_domain.record_override(conn, campaign_id, result, via="cli"))


def _import(env: Env, request: campaigns.LaunchRequest, recipients: Path) -> campaigns.LaunchReport:
    """Create the campaign and import its recipients, with a progress bar (in bytes of the
    file) on a terminal."""
    with _clear_errors():
        stream = campaigns.open_recipients(recipients)
        size = os.fstat(stream.fileno()).st_size
    with (
        stream,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc="importing",
            disable=None,
            file=sys.stderr,
        ) as bar,
    ):
        return run(
            env,
            lambda conn: campaigns.launch(
                conn,
                request,
                stream,
                templates=TemplateStore(env.settings.templates_dir),
                hash_key=env.settings.hash_key(),
                progress=bar.update,
            ),
        )


def _print_launch(
    report: campaigns.LaunchReport, idempotency_key: str | None, *, as_json: bool
) -> None:
    """What `launch` prints: the campaign, how many were imported, the rejected lines."""
    rejected = [{"line": r.line, "reason": r.reason} for r in report.rejected]
    if report.existing:
        text = [
            f"campaign {report.campaign_id} already existed (idempotency key "
            f"{idempotency_key}): {report.imported} recipients, nothing imported again"
        ]
    else:
        text = [f"campaign {report.campaign_id}: {report.imported} recipients imported"]
        if report.start_at is not None:
            text[0] += f", scheduled for {schedule.utc_text(report.start_at)}"
    text += [f"  line {r['line']}: {r['reason']}" for r in rejected]
    _emit(
        as_json,
        {
            "campaign_id": report.campaign_id,
            "imported": report.imported,
            "rejected": rejected,
            "existing": report.existing,
        },
        "\n".join(text),
    )


def _enqueue_launch(env: Env, campaign_id: int, what: str, *, at: datetime | None = None) -> None:
    """Ask the workers to start the campaign (at `at` when it is scheduled); if Redis cannot
    take the job, say on stderr that the campaign `what` (created, resumed, ...) all the
    same and reconcile starts it."""

    async def go() -> None:
        redis = await queue.connect(env.urls.redis_url)
        try:
            await queue.enqueue_launch(redis, campaign_id, at=at)
        finally:
            await redis.aclose()

    try:
        asyncio.run(go())
    except queue.ERRORS as e:
        error = type(e).__name__
        structlog.get_logger().warning(
            "campaign.enqueue_failed", campaign_id=campaign_id, error=error
        )
        click.echo(
            f"warning: campaign {campaign_id} {what}, but it could not be queued (Redis: "
            f"{error}), so the reconcile job will start it (a worker runs it every "
            f"{env.settings.reconcile_interval_seconds} s)",
            err=True,
        )


@main.command("campaigns")
@click.option("--client", "client_id", help="Only this client's campaigns.")
@click.option(
    "--status",
    type=click.Choice(CAMPAIGN_STATUSES),
    help="Only the campaigns in this status.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def campaigns_list(client_id: str | None, status: CampaignStatus | None, as_json: bool) -> None:
    """List the campaigns, newest first: id, client, name, kind, status, invitations by
    state, when each was created and when it ended."""
    with environment() as env:
        listed = run(
            env, lambda conn: campaigns.list_campaigns(conn, client_id=client_id, status=status)
        )
    if as_json:
        click.echo(json.dumps([c.as_json() for c in listed]))
        return
    click.echo("\n".join(_campaign_line(c) for c in listed) or "no campaigns")


def _when(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _campaign_line(c: records.CampaignSummary) -> str:
    """`12 acme survey "Spring": completed, 120 invitations (sent 118, failed 2), created
    2025-05-01 10:00 UTC, ended 2025-05-01 10:05 UTC`."""
    counts = counts_text(c.counts)
    ended = f", ended {_when(c.finished_at)}" if c.finished_at else ""
    return (
        f"{c.id} {c.client_id} {c.kind} {json.dumps(c.name, ensure_ascii=False)}: {c.status}, "
        f"{sum(c.counts.values())} invitations"
        + (f" ({counts})" if counts else "")
        + f", created {_when(c.created_at)}{ended}"
    )


@main.command()
@click.argument("campaign_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--watch",
    is_flag=True,
    help="Follow the campaign until it ends: a progress bar on a terminal, else a line "
    "(or with --json an object) per change. Ctrl-C stops watching.",
)
def status(campaign_id: int, as_json: bool, watch: bool) -> None:
    """Show a campaign's status and how many invitations are in each state."""
    if watch:
        from worker.cli import watch as watching

        with environment() as env:
            display = watching.display_for(sys.stdout, as_json=as_json)
            relays = relay_config.relays(env.settings)
            try:
                run(
                    env,
                    lambda conn: watching.follow(
                        conn, campaign_id, display, redis_url=env.urls.redis_url, relays=relays
                    ),
                )
            except KeyboardInterrupt:
                click.echo("", err=True)
        return
    with environment() as env:
        report = run(env, lambda conn: _status_of(conn, campaign_id))
        report = asyncio.run(
            campaigns.with_relays_at(report, env.urls.redis_url, relay_config.relays(env.settings))
        )
    because = f" ({report.status_reason})" if report.status_reason else ""
    lines = [f"campaign {campaign_id}: {report.status}{because}, {report.total} invitations"]
    if report.domain_override:
        lines.append(f"  {override_line(report.domain_override)}")
    waiting = report.schedule.waiting_line()
    if waiting:
        lines.append(f"  {waiting}")
    if report.waiting_for_relay:
        lines += [f"  {line}" for line in waiting_lines(report.relays)]
    lines += [f"  {state}: {n}" for state, n in sorted(report.counts.items())]
    lines += [f"  {key}: {n}" for key, n in report.reasons.items()]
    if any(report.feedback.values()):
        lines.append("  feedback: " + ", ".join(f"{k} {n}" for k, n in report.feedback.items()))
    if report.completed:
        lines.append(f"  completed (answered): {report.completed}")
    _emit(as_json, report.as_json(), "\n".join(lines))


async def _status_of(conn: asyncpg.Connection, campaign_id: int) -> campaigns.StatusReport:
    """The campaign's status report, with what its launch overrode (`--allow-unaligned`)."""
    report = await campaigns.status_report(conn, campaign_id)
    return replace(report, domain_override=await sending_domain.override_of(conn, campaign_id))


def override_line(overridden: dict[str, Any]) -> str:
    """`status`'s line for a campaign launched over its client's failing sending domain."""
    return (
        f"launched with --allow-unaligned: sending domain {overridden['domain']} "
        f"(DMARC p={overridden['policy']}) failed the check"
    )


def _control(campaign_id: int, action: Action) -> str:
    """Pause, resume or cancel a campaign; idempotent; returns what happened."""
    with environment(redis=action == "resume") as env:
        moved, state = run(env, lambda conn: campaigns.control(conn, campaign_id, action))
        if moved:
            structlog.get_logger().info(f"campaign.{state}", campaign_id=campaign_id)
            if state == "running":
                _enqueue_launch(env, campaign_id, "resumed")
    return f"campaign {campaign_id}: {state}" + ("" if moved else " (unchanged)")


@main.command()
@click.argument("campaign_id", type=int)
def pause(campaign_id: int) -> None:
    """Stop sending a campaign after the chunk in flight (resume picks it up again)."""
    click.echo(_control(campaign_id, "pause"))


@main.command()
@click.argument("campaign_id", type=int)
def resume(campaign_id: int) -> None:
    """Continue a paused campaign."""
    click.echo(_control(campaign_id, "resume"))


@main.command()
@click.argument("campaign_id", type=int)
def cancel(campaign_id: int) -> None:
    """Stop a campaign for good: what was not sent yet is marked cancelled."""
    click.echo(_control(campaign_id, "cancel"))


@main.command()
@click.argument("refs", nargs=-1, metavar="[REF]...")
@click.option(
    "--file",
    "ref_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A file of references, one a line (blank lines are ignored).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def complete(refs: tuple[str, ...], ref_file: Path | None, as_json: bool) -> None:
    """Record that invitations were answered: REF is the r= value of the survey link.

    Reminders skip completed invitations. The first completion of an invitation counts;
    later ones are reported as already completed, unknown references as unknown.
    """
    if not refs and ref_file is None:
        raise click.UsageError("give one or more REF, or --file FILE")
    lines = completion.RefLines([], [])
    if ref_file is not None:
        try:
            with ref_file.open("rb") as stream:
                lines = completion.read_ref_lines(stream)
        except OSError as e:
            raise click.ClickException(f"cannot read {ref_file}: {e.strerror}") from None
    with _clear_errors():
        wanted = completion.command_refs(refs, lines, str(ref_file) if ref_file else None)

    async def work(conn: asyncpg.Connection) -> completion.CompletionReport:
        report = completion.CompletionReport()
        for start in range(0, len(wanted), completion.MAX_REFS):
            batch = wanted[start : start + completion.MAX_REFS]
            report.add(await completion.complete(conn, batch, hash_key=env.settings.hash_key()))
        return report

    with environment(secrets=True) as env:
        report = run(env, work)
    completion.log_completed(report, source="cli")
    rejected = [{"line": n, "reason": reason} for n, reason in lines.rejected]
    text = [
        f"{len(report.completed)} completed, {report.already_completed} already completed, "
        f"{len(report.unknown)} unknown"
    ]
    text += [f"  unknown: {ref}" for ref in report.unknown]
    text += [f"  line {r['line']}: {r['reason']}" for r in rejected]
    _emit(as_json, {**report.as_json(), "rejected": rejected}, "\n".join(text))


@main.command("resend-unknown")
@click.argument("campaign_id", type=int)
def resend_unknown(campaign_id: int) -> None:
    """Send again the invitations whose SMTP reply never came (each may get two messages)."""
    with environment(secrets=True, redis=True) as env:
        count = run(env, lambda conn: campaigns.resend_unknown(conn, campaign_id))
        if count:
            structlog.get_logger().info(
                "campaign.resend_unknown", campaign_id=campaign_id, count=count
            )
            _enqueue_launch(env, campaign_id, "reopened")
    click.echo(f"campaign {campaign_id}: {count} unknown invitations queued again")


@main.command()
@click.argument("campaign_id", type=int)
@click.option(
    "--reason",
    "reasons",
    multiple=True,
    type=click.Choice(campaigns.RETRYABLE),
    help="Put back only invitations that failed for this reason (repeatable; default: all "
    "of them).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def retry(campaign_id: int, reasons: tuple[str, ...], as_json: bool) -> None:
    """Send again the invitations that failed for a transient reason (retries ran out, the
    relay's trouble), with fresh retries; never hard bounces, refusals or opt-outs."""
    with environment(secrets=True, redis=True) as env:
        report = run(env, lambda conn: campaigns.retry(conn, campaign_id, reasons))
        if report.requeued:
            structlog.get_logger().info(
                "campaign.retry",
                campaign_id=campaign_id,
                requeued=report.requeued,
                by_reason=report.by_reason,
            )
            if report.status == "running":
                _enqueue_launch(env, campaign_id, "reopened")
    lines = [f"campaign {campaign_id}: requeued {report.requeued} ({report.status})"]
    lines += [f"  {reason}: {n}" for reason, n in report.by_reason.items()]
    _emit(as_json, report.as_json(), "\n".join(lines))


@main.command()
@click.option("--template", required=True, help="Template folder name under templates/.")
@click.option(
    "--locale", default="en", show_default=True, help="Locale to render (falls back to en)."
)
@click.option(
    "--client-name",
    default="Acme Research",
    show_default=True,
    help="Client name shown in the sample message.",
)
@click.option(
    "--reminder",
    type=click.IntRange(0, campaigns.MAX_REMINDERS),
    default=0,
    show_default=True,
    help="Render reminder round N (0: the first message).",
)
def preview(template: str, locale: str, client_name: str, reminder: int) -> None:
    """Render a template with sample values and print subject, text and HTML."""
    with _clear_errors():
        settings = Settings()
        store = TemplateStore(settings.templates_dir, firm_name=settings.firm_name)
        rendered = store.render(
            template,
            [locale],
            {
                "client_name": client_name,
                "first_name": "Alex",
                "survey_url": "https://survey.example.com/s?r=preview",
                "unsubscribe_url": f"{settings.public_base_url}/unsubscribe/preview-token",
                "reminder": reminder,
            },
        )
    click.echo(f"Subject: {rendered.subject}\nLocale: {rendered.locale}\n")
    click.echo(rendered.text)
    click.echo("-" * 72)
    click.echo(rendered.html)
