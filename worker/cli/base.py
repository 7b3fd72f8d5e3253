"""What every command shares: the root group `main` (one-line errors), the environment
(settings, logging, embedded or configured services, reachability checks), `run` with a
database connection, and the --output path and file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import FrameType
from typing import IO, Any, TypeVar
from urllib.parse import unquote, urlsplit

import asyncpg
import click
from pydantic import ValidationError

from worker import db, logs, queue
from worker.errors import ConfigError, SurveyWorkerError
from worker.settings import ServiceUrls, Settings, location

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
def _services(settings: Settings, *, postgres: bool = True) -> Iterator[ServiceUrls]:
    """The configured servers; the embedded ones (worker.dev) for those not configured
    (no Postgres at all for a command that uses none)."""
    redis_url = settings.queue_url()
    if (settings.database_url or not postgres) and redis_url:
        yield ServiceUrls(settings.database_url or "", redis_url)
        return
    from worker.dev import embedded

    with embedded.services(
        database_url=settings.database_url,
        redis_url=redis_url,
        data_dir=settings.data_dir,
        postgres=postgres,
    ) as urls:
        yield urls


@contextmanager
def environment(
    *,
    secrets: bool = False,
    database: bool = True,
    redis: bool = False,
    service: bool = False,
    postgres: bool = True,
) -> Iterator[Env]:
    """Load and check the settings, configure logging, start embedded services if none are
    configured, and check that the services the command uses answer, before it writes
    anything.

    `database` and `redis` name the services to check; a command that never uses Postgres
    (`postgres=False`: inbound) starts no embedded one. A `service` (worker, web) logs on
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
            _services(settings, postgres=postgres) as urls,
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
    except queue.SentinelProblem:
        raise  # names its own setting
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
            conn = await asyncpg.connect(
                env.urls.database_url, **db.connect_options(env.settings.database_pool_mode)
            )
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
@click.version_option(package_name="survey-worker", prog_name="survey-worker")
def main() -> None:
    """survey-worker: send survey invitations by e-mail, never to an opted-out address.

    Configuration comes from the environment and `.env` (see `.env.example`). With
    DATABASE_URL and REDIS_URL unset, an embedded Postgres and Redis are started under
    DATA_DIR and stopped when the last command using them exits.
    """


def _not_blank(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.strip():
        raise click.BadParameter("must not be empty", param_hint=f"--{param.name}")
    return value.strip()
