"""The long-running services and their housekeeping: `migrate`, `worker`, `web`,
`inbound`, `health` (container probes) and `demo`."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import click
import structlog

from worker import db, queue
from worker.cli.base import (
    REACH_TIMEOUT,
    _clear_errors,
    _unreachable,
    environment,
    main,
    prepare_database,
    run,
)
from worker.errors import ConfigError
from worker.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


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


@main.command()
def health() -> None:
    """Exit 0 if this host's worker heartbeat is fresh, 1 otherwise (container probes)."""
    from worker.main import health_key

    with _clear_errors():
        settings = Settings()
        url = settings.queue_url()
    if not url:
        raise click.ClickException("health needs REDIS_URL (the worker's Redis)")

    async def fresh() -> bool:
        client = await queue.connect(url, retries=0)
        try:
            return bool(await client.exists(health_key()))
        finally:
            await client.aclose()

    try:
        ok = asyncio.run(asyncio.wait_for(fresh(), REACH_TIMEOUT))
    except queue.SentinelProblem as e:
        raise click.ClickException(str(e)) from None
    except queue.ERRORS as e:
        raise click.ClickException(_unreachable("REDIS_URL", "Redis", url, e)) from None
    click.echo("healthy" if ok else "unhealthy: no fresh worker heartbeat")
    sys.exit(0 if ok else 1)


@main.command()
@click.option(
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("demo-mail"),
    show_default=True,
    help="Folder where the local SMTP sink saves each message as .eml.",
)
@click.option(
    "--serve",
    is_flag=True,
    help="Keep the web app up afterwards, so the links in the saved messages work, until Ctrl-C.",
)
def demo(output: Path, serve: bool) -> None:
    """Run the whole system end to end on embedded services and a local SMTP sink."""
    from worker.dev import demo as demo_run

    os.environ.setdefault("APP_ENV", "demo")
    with _clear_errors():
        demo_run.main(output, serve=serve)


def _listen_options(port: int, port_help: str) -> Callable[[F], F]:
    """`--host` and `--port` of a server command."""

    def add(command: F) -> F:
        command = click.option(
            "--port",
            default=port,
            show_default=True,
            type=click.IntRange(0, 65535),
            help=port_help,
        )(command)
        return click.option(
            "--host", default="127.0.0.1", show_default=True, help="Address to listen on."
        )(command)

    return add


@main.command()
@_listen_options(8000, "Port to listen on.")
def web(host: str, port: int) -> None:
    """Run the web app.

    \b
    It serves:
      /unsubscribe/TOKEN  the unsubscribe page (GET asks, POST records the opt-out)
      /v1/...             the client API (API keys), /v1/docs and /v1/openapi.json
      /webhooks/...       provider bounce and complaint webhooks, survey completions
      /ops                the operators' page (with OPS_USERS)
      /metrics            Prometheus metrics (METRICS_TOKEN)
      /healthz            whether opt-outs can be taken
    """
    from worker.web import app as web_app

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
@_listen_options(2525, "Port to listen on (the MX of BOUNCE_DOMAIN forwards port 25 here).")
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
    # It needs only Redis: no DATABASE_URL, and no embedded Postgres.
    with environment(secrets=True, database=False, service=True, postgres=False) as env:
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
