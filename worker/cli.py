"""The `survey-worker` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import IO, Any, TypeVar
from urllib.parse import unquote, urlsplit

import asyncpg
import click
import redis.asyncio
import redis.exceptions
import structlog
from pydantic import ValidationError
from tqdm import tqdm

from worker import (
    addresses,
    campaigns,
    completion,
    db,
    durations,
    logs,
    optouts,
    privacy,
    queue,
)
from worker.errors import ConfigError, SurveyWorkerError
from worker.render import TemplateStore
from worker.settings import ServiceUrls, Settings, location
from worker.suppression import Scope

T = TypeVar("T")
# Seconds a command waits for Postgres, Redis or the SMTP relay to answer before it says
# which setting points at a server that is not there.
REACH_TIMEOUT = 5.0


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one line on stderr and exit status 1."""
    try:
        yield
    except ValidationError as e:
        errors = e.errors()
        where = ".".join(str(p) for p in errors[0]["loc"]).upper()
        # A validator's own message, without pydantic's "Value error, " in front of it.
        error = errors[0].get("ctx", {}).get("error")
        message = str(error) if isinstance(error, ValueError) else errors[0]["msg"]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise click.ClickException(f"{where}: {message}{more}") from None
    except SurveyWorkerError as e:
        raise click.ClickException(str(e)) from None
    except (*db.DB_ERRORS, *queue.ERRORS) as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from None


class OutputPath(click.Path):
    """An --output path, checked when the command line is read, before anything is read,
    written or audited: never blank (an empty path is the current folder); a file's folder
    must exist and be writable (a folder given for a drop is created when missing)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("must not be empty", param, ctx)
        path = super().convert(value, param, ctx)
        if self.dir_okay:
            return path
        folder = Path(os.fsdecode(path)).parent
        if not folder.is_dir():
            self.fail(f"the folder {folder} does not exist", param, ctx)
        if not os.access(folder, os.W_OK | os.X_OK):
            self.fail(f"the folder {folder} cannot be written", param, ctx)
        return path


@contextmanager
def output_file(path: Path | None, *, binary: bool = False) -> Iterator[IO[Any]]:
    """Standard output, or `path` written atomically: a temporary file in its folder,
    created on entry (before the command reads or audits anything), which becomes `path`
    only when the block succeeds and is removed when it fails. Errors name `path`, never
    the temporary file."""
    if path is None:
        with click.open_file(
            "-", "wb" if binary else "w", encoding=None if binary else "utf-8"
        ) as std:
            yield std
        return
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as e:
        raise click.ClickException(f"cannot write {path}: {e.strerror}") from None
    out = os.fdopen(handle, "wb") if binary else os.fdopen(handle, "w", encoding="utf-8")
    done = False
    try:
        yield out
        try:
            out.close()
            os.replace(temporary, path)
        except OSError as e:
            raise click.ClickException(f"cannot write {path}: {e.strerror}") from None
        done = True
    finally:
        out.close()
        if not done:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


class Env:
    """Settings plus the service URLs the command runs against."""

    def __init__(self, settings: Settings, urls: ServiceUrls) -> None:
        self.settings = settings
        self.urls = urls


@contextmanager
def _services(settings: Settings) -> Iterator[ServiceUrls]:
    """The configured servers; the embedded ones (worker.dev) for those not configured."""
    if settings.database_url and settings.redis_url:
        yield ServiceUrls(settings.database_url, settings.redis_url)
        return
    from worker.dev import embedded

    with embedded.services(
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        data_dir=settings.data_dir,
    ) as urls:
        yield urls


@contextmanager
def environment(
    *, secrets: bool = False, database: bool = True, redis: bool = False, service: bool = False
) -> Iterator[Env]:
    """Load and check the settings, configure logging, start embedded services if none are
    configured, and check that the services the command uses answer, before it writes
    anything.

    `database` and `redis` name the services to check. A `service` (worker, web) logs on
    stdout, and SIGTERM makes it leave through this context with exit status 0, so the
    embedded servers stop when it was their last user; other commands log on stderr, their
    stdout being their answer.
    """
    with _clear_errors():
        settings = Settings()
        logs.configure(
            fmt=settings.log_format,
            level=settings.log_level,
            stream=sys.stdout if service else sys.stderr,
        )
        if secrets:
            settings.check_secrets()
        with (
            _services(settings) as urls,
            _exit_on_sigterm() if service else nullcontext(),
        ):
            env = Env(settings, urls)
            if database:
                _reach(env, "DATABASE_URL", "Postgres", urls.database_url, _postgres_answers)
            if redis:
                _reach(env, "REDIS_URL", "Redis", urls.redis_url, _redis_answers)
            yield env


@contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """Make SIGTERM raise SystemExit(0) in the block, so enclosing `with` blocks close.

    arq handles SIGTERM itself while the worker runs; uvicorn hands a SIGTERM it handled on
    to the handler it found, so this one runs after the web app's graceful shutdown (its
    default would end the process there, leaving the embedded servers running).
    """

    def leave(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


async def _postgres_answers(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=REACH_TIMEOUT)
    await conn.close()


async def _redis_answers(url: str) -> None:
    await queue.check(url, timeout=REACH_TIMEOUT)


def _reach(
    env: Env, variable: str, name: str, url: str, probe: Callable[[str], Coroutine[Any, Any, None]]
) -> None:
    """Raise ConfigError naming `variable` unless the server at `url` answers `probe`."""
    try:
        asyncio.run(probe(url))
    except (*db.DB_ERRORS, *queue.ERRORS) as e:
        configured = getattr(env.settings, variable.lower()) is not None
        raise ConfigError(
            _unreachable(variable if configured else f"embedded {name}", name, url, e)
        ) from e


def _unreachable(label: str, name: str, url: str, error: BaseException) -> str:
    """`label: cannot connect to NAME at HOST:PORT/PATH: why`, with no password in it."""
    reason = str(error) or type(error).__name__
    password = urlsplit(url).password
    if password:
        for form in {password, unquote(password)}:
            reason = reason.replace(form, "***")
    return f"{label}: cannot connect to {name} at {location(url)}: {reason}"


def run(
    env: Env, work: Callable[[asyncpg.Connection], Awaitable[T]], *, migrating: bool = False
) -> T:
    """Run `work` with a database connection, migrating first on embedded Postgres.

    A configured database must have the schema already, except for `migrating` work
    (the `migrate` command itself), which is what creates it.
    """

    async def main() -> T:
        try:
            conn = await asyncpg.connect(env.urls.database_url)
        except db.DB_ERRORS as e:
            raise ConfigError(f"cannot connect to Postgres: {e}") from e
        try:
            if migrating:
                return await work(conn)
            if env.settings.database_url is None:
                await db.migrate(conn)
            elif not await db.has_schema(conn):
                raise ConfigError("the database has no schema yet: run `survey-worker migrate`")
            await db.init_connection(conn)
            return await work(conn)
        finally:
            await conn.close()

    with _clear_errors():
        return asyncio.run(main())


async def _no_work(_conn: asyncpg.Connection) -> None:
    return None


def prepare_database(env: Env) -> None:
    """Migrate the embedded database, or check that a configured one has the schema."""
    run(env, _no_work)


def _emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(data) if as_json else text)


class OneLineErrors(click.Group):
    """A command group whose every error, usage errors included, is one line on stderr and
    exit status 1 (click's usage errors are three lines and exit status 2)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Errors are reported here rather than by click's standalone mode.
        kwargs["standalone_mode"] = False
        try:
            code = self.main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as e:
            # No command at all is a request for help, as `--help` is.
            click.echo(e.ctx.get_help() if e.ctx else "")
            sys.exit(0)
        except click.UsageError as e:
            hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
            click.echo(f"Error: {_one_line(e.format_message())}{hint}", err=True)
            sys.exit(1)
        except click.ClickException as e:
            click.echo(f"Error: {_one_line(e.format_message())}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        # Without standalone mode click returns what `--help` or ctx.exit() asked for.
        sys.exit(code if isinstance(code, int) else 0)


def _one_line(message: str) -> str:
    return " ".join(message.split())


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """survey-worker: send survey invitations by e-mail, never to an opted-out address.

    Configuration comes from the environment and `.env` (see `.env.example`). With
    DATABASE_URL and REDIS_URL unset, an embedded Postgres and Redis are started under
    DATA_DIR and stopped when the last command using them exits.
    """


@main.command()
def migrate() -> None:
    """Apply the SQL migrations in sql/ that are not applied yet."""
    with environment() as env:

        async def work(conn: asyncpg.Connection) -> list[str]:
            return await db.migrate(conn)

        applied = run(env, work, migrating=True)
    click.echo("\n".join(f"applied {n}" for n in applied) or "schema is up to date")


@main.command()
@click.option("--burst", is_flag=True, help="Exit once the queue is empty.")
def worker(burst: bool) -> None:
    """Run a worker: take jobs from Redis and send invitations."""
    from worker.main import create_worker

    with environment(secrets=True, redis=True, service=True) as env:
        _check_metrics_port(env.settings)
        prepare_database(env)
        _warn_if_smtp_unreachable(env.settings)
        with _clear_errors():
            _install_uvloop()
            create_worker(
                env.settings,
                database_url=env.urls.database_url,
                redis_url=env.urls.redis_url,
                burst=burst,
            ).run()


def _warn_if_smtp_unreachable(settings: Settings) -> None:
    """Log a warning when nothing answers at SMTP_HOST:SMTP_PORT.

    Only a warning: a relay that is down for a while is a fault the worker rides out (its
    sends are deferred and retried), not a reason not to start.
    """
    address = (settings.smtp_host, settings.smtp_port)
    try:
        with socket.create_connection(address, timeout=REACH_TIMEOUT):
            pass
    except OSError as e:
        structlog.get_logger().warning(
            "worker.smtp_unreachable",
            smtp_host=settings.smtp_host,
            smtp_port=settings.smtp_port,
            error=type(e).__name__,
        )


def check_listen(host: str, port: int) -> None:
    """Raise ConfigError unless `host:port` can be listened on now, as uvicorn will."""
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            with socket.socket(family, kind, proto) as probe:
                # As asyncio's create_server: a port in TIME_WAIT is free, a listened one not.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
    except OSError as e:
        reason = (e.strerror or type(e).__name__).lower()
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}") from e


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


@main.group()
def client() -> None:
    """Manage the firm's clients."""


@client.command("add")
@click.argument("client_id")
@click.option("--name", required=True, help="The client's name, shown in every message.")
@click.option("--sender", required=True, help="The From address of the client's invitations.")
def client_add(client_id: str, name: str, sender: str) -> None:
    """Register client CLIENT_ID (or update its name and sender)."""
    with environment() as env:
        created = run(env, lambda conn: campaigns.add_client(conn, client_id, name, sender))
    click.echo(f"client {client_id} {'added' if created else 'updated'}")


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
    help="survey: client opt-outs apply; marketing: firm's list.",
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
    as_json: bool,
) -> None:
    """Create a campaign, import its recipients and start sending it."""
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
    )
    with _clear_errors():
        campaigns.check_request(request)
    # Redis is checked too before anything is imported: a campaign that could not be
    # queued would wait for the next reconcile.
    with environment(secrets=True, redis=True) as env:
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
            report = run(
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
        _enqueue_launch(
            env, report.campaign_id, "already existed" if report.existing else "created"
        )
    rejected = [{"line": r.line, "reason": r.reason} for r in report.rejected]
    if report.existing:
        text = [
            f"campaign {report.campaign_id} already existed (idempotency key "
            f"{idempotency_key}): {report.imported} recipients, nothing imported again"
        ]
    else:
        text = [f"campaign {report.campaign_id}: {report.imported} recipients imported"]
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


def _enqueue_launch(env: Env, campaign_id: int, what: str) -> None:
    """Ask the workers to start the campaign; if Redis cannot take the job, say on stderr
    that the campaign `what` (created, resumed, ...) all the same and reconcile starts it."""

    async def go() -> None:
        redis = await queue.connect(env.urls.redis_url)
        try:
            await queue.enqueue_launch(redis, campaign_id)
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
        from worker import watch as watching

        with environment() as env:
            display = watching.display_for(sys.stdout, as_json=as_json)
            try:
                run(env, lambda conn: watching.follow(conn, campaign_id, display))
            except KeyboardInterrupt:
                click.echo("", err=True)
        return
    with environment() as env:
        report = run(env, lambda conn: campaigns.status_report(conn, campaign_id))
    because = f" ({report.status_reason})" if report.status_reason else ""
    lines = [f"campaign {campaign_id}: {report.status}{because}, {report.total} invitations"]
    lines += [f"  {state}: {n}" for state, n in sorted(report.counts.items())]
    lines += [f"  {key}: {n}" for key, n in report.reasons.items()]
    if any(report.feedback.values()):
        lines.append("  feedback: " + ", ".join(f"{k} {n}" for k, n in report.feedback.items()))
    if report.completed:
        lines.append(f"  completed (answered): {report.completed}")
    _emit(as_json, report.as_json(), "\n".join(lines))


def _control(campaign_id: int, action: campaigns.Action) -> str:
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
def health() -> None:
    """Exit 0 if this host's worker heartbeat is fresh, 1 otherwise (container probes)."""
    from worker.main import health_key

    with _clear_errors():
        settings = Settings()
    url = settings.redis_url
    if not url:
        raise click.ClickException("health needs REDIS_URL (the worker's Redis)")

    async def fresh() -> bool:
        client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            return bool(await client.exists(health_key()))
        finally:
            await client.aclose()

    try:
        ok = asyncio.run(fresh())
    except queue.ERRORS as e:
        raise click.ClickException(_unreachable("REDIS_URL", "Redis", url, e)) from None
    click.echo("healthy" if ok else "unhealthy: no fresh worker heartbeat")
    sys.exit(0 if ok else 1)


def _scope(client_id: str | None, marketing: bool) -> Scope:
    if (client_id is None) == (not marketing):
        raise click.UsageError("give exactly one of --client ID or --marketing")
    return Scope("marketing", "") if marketing else Scope("survey", client_id or "")


def _address(env: Env, email: str) -> tuple[str, bytes]:
    """The normalised address and its keyed hash (a bad address is one clear error)."""
    with _clear_errors():
        normalised = addresses.normalise(email)
    return normalised, addresses.address_hash(env.settings.hash_key(), normalised)


@main.command("opt-out")
@click.argument("email")
@click.option("--client", "client_id", help="Opt out of this client's surveys.")
@click.option("--marketing", is_flag=True, help="Opt out of the firm's marketing e-mail.")
def opt_out(email: str, client_id: str | None, marketing: bool) -> None:
    """Put EMAIL on a client's opt-out list or on the marketing list, at once."""
    scope = _scope(client_id, marketing)
    with environment(secrets=True) as env:
        normalised, email_hash = _address(env, email)

        async def work(conn: asyncpg.Connection) -> bool:
            await optouts.require_client(conn, scope)
            return await optouts.add(
                conn,
                scope,
                email_hash=email_hash,
                email=normalised,
                source="cli",
                actor=os.environ.get("USER", "cli"),
            )

        added = run(env, work)
        if added:
            structlog.get_logger().info(
                "opt_out.recorded",
                scope=optouts.scope_label(scope),
                recipient=addresses.recipient_id(email_hash),
                source="cli",
            )
    click.echo("opted out" if added else "already opted out")


@main.command()
@click.option("--template", required=True, help="Template folder name under templates/.")
@click.option("--locale", default="en", show_default=True)
@click.option("--client-name", default="Acme Research", show_default=True)
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
        store = TemplateStore(settings.templates_dir)
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


@main.command()
@click.option(
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("demo-mail"),
    show_default=True,
    help="Folder where the local SMTP sink saves each message as .eml.",
)
def demo(output: Path) -> None:
    """Run the whole system end to end on embedded services and a local SMTP sink."""
    from worker.dev import demo as demo_run

    os.environ.setdefault("APP_ENV", "demo")
    with _clear_errors():
        demo_run.main(output)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on.",
)
def web(host: str, port: int) -> None:
    """Run the unsubscribe web app: GET /unsubscribe/TOKEN asks, POST records the opt-out."""
    from worker import web as web_app

    with _clear_errors():
        check_listen(host, port)
    # A configured Postgres may be down right now, and the app must start anyway (it
    # queues clicks until Postgres is back): only the settings are checked.
    with environment(secrets=True, database=False, service=True) as env:
        if env.settings.database_url is None:
            prepare_database(env)
        with _clear_errors():
            web_app.serve(
                env.settings,
                database_url=env.urls.database_url,
                redis_url=env.urls.redis_url,
                host=host,
                port=port,
            )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=2525,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (the MX of BOUNCE_DOMAIN forwards port 25 here).",
)
def inbound(host: str, port: int) -> None:
    """Receive bounces and complaints: an SMTP server for BOUNCE_DOMAIN only.

    Mail to a VERP address of a message we sent is queued for the record_feedback job
    (answered 250 once queued, 451 while Redis is away); anything else is refused. With
    METRICS_PORT set, serves Prometheus metrics there; with INBOUND_TLS_CERT and
    INBOUND_TLS_KEY set, offers STARTTLS.
    """
    from worker import inbound as inbound_server

    with _clear_errors():
        check_listen(host, port)
    # Like the web app, it starts while Redis is down, and answers 451 until it is back.
    with environment(secrets=True, database=False, service=True) as env:
        domain = env.settings.bounce_domain
        if domain is None:
            raise click.ClickException(
                "BOUNCE_DOMAIN is not set: inbound receives the bounces sent to it"
            )
        _check_metrics_port(env.settings)
        tls = inbound_server.tls_context(
            env.settings.inbound_tls_cert, env.settings.inbound_tls_key
        )
        _install_uvloop()
        asyncio.run(
            inbound_server.serve(
                keys=env.settings.signing_keys(),
                domain=domain,
                redis_url=env.urls.redis_url,
                max_bytes=env.settings.inbound_max_bytes,
                host=host,
                port=port,
                metrics_port=env.settings.metrics_port,
                tls=tls,
            )
        )


def _check_metrics_port(settings: Settings) -> None:
    """Refuse to start when METRICS_PORT is set and taken (rather than run unobserved)."""
    if settings.metrics_port is not None:
        try:
            # Prometheus scrapes from elsewhere: every interface, as exporters listen.
            check_listen("0.0.0.0", settings.metrics_port)  # noqa: S104
        except ConfigError as e:
            raise click.ClickException(f"METRICS_PORT: {e}") from None


def _not_blank(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.strip():
        raise click.BadParameter("must not be empty", param_hint=f"--{param.name}")
    return value.strip()


@main.command()
@click.argument("email")
@click.option("--client", "client_id", help="Take EMAIL off this client's opt-out list.")
@click.option("--marketing", is_flag=True, help="Take EMAIL off the marketing opt-out list.")
@click.option("--actor", required=True, callback=_not_blank, help="Who reverses it.")
@click.option("--reason", required=True, callback=_not_blank, help="Why, for the audit trail.")
def resubscribe(
    email: str, client_id: str | None, marketing: bool, actor: str, reason: str
) -> None:
    """Reverse an opt-out on the privacy contact's request (audited; privacy_officer role)."""
    scope = _scope(client_id, marketing)
    with environment(secrets=True) as env:
        _, email_hash = _address(env, email)
        removed = run(
            env,
            lambda conn: privacy.resubscribe(
                conn, scope, email_hash=email_hash, actor=actor, reason=reason
            ),
        )
    click.echo("opt-out reversed" if removed else "not on that list; nothing changed")


@main.command("export-opt-outs")
@click.option("--client", "client_id", help="Export this client's opt-out list.")
@click.option("--marketing", is_flag=True, help="Export the marketing opt-out list.")
@click.option(
    "--output",
    type=OutputPath(path_type=Path, dir_okay=False),
    help="CSV file to write (default: standard output).",
)
def export_opt_outs(client_id: str | None, marketing: bool, output: Path | None) -> None:
    """Write one opt-out list as CSV: email,opted_out_at,source."""
    scope = _scope(client_id, marketing)
    with (
        environment() as env,
        _clear_errors(),
        # Atomic: a failed export leaves no half-written file behind.
        output_file(output) as out,
    ):
        report = run(env, lambda conn: privacy.export_opt_outs(conn, scope, out))
    if report.without_address:
        click.echo(
            f"{report.without_address} entries without a stored address (erased) not exported",
            err=True,
        )
    click.echo(f"{report.exported} opt-outs exported", err=True)


@main.command()
@click.argument("email")
@click.option("--actor", required=True, callback=_not_blank, help="Who carries out the request.")
def erase(email: str, actor: str) -> None:
    """Erase EMAIL everywhere; its keyed hash stays, so its opt-outs still apply."""
    with environment(secrets=True) as env:
        _, email_hash = _address(env, email)
        report = run(env, lambda conn: privacy.erase(conn, email_hash=email_hash, actor=actor))
    click.echo(
        f"erased from {report.invitations} invitations, {report.client_opt_outs} client "
        f"opt-out entries and {report.marketing_opt_outs} marketing opt-out entries"
    )


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def purge(as_json: bool) -> None:
    """Delete the invitations of campaigns that ended more than RETENTION_DAYS ago."""
    with environment() as env:
        days, counts_days = env.settings.retention_days, env.settings.counts_days()
        report = run(
            env, lambda conn: privacy.purge(conn, retention_days=days, counts_days=counts_days)
        )
    _emit(
        as_json,
        {
            "campaigns": report.campaigns,
            "invitations": report.invitations,
            "counts": report.counts,
            "retention_days": days,
        },
        f"purged {report.invitations} invitations of {report.campaigns} campaigns that ended "
        f"more than {days} days ago",
    )


# `client key`, `feed` and `access-request` live in their own module, which adds them to
# the groups above when imported.
from worker import cli_clients  # noqa: E402, F401

# `ops-password` lives with /ops (worker/ops/).
from worker.ops import commands as ops_commands  # noqa: E402, F401
