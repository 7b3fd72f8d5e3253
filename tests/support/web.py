"""Driving the unsubscribe app and the CLI from tests: a real uvicorn server in the test's
event loop, tokens as the worker signs them, `survey-worker` in a subprocess, and the check
that logs hold no address or token."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import structlog
from structlog.testing import capture_logs

from tests.support.pipeline import parse
from tests.support.smtp import RecordedMessage
from worker import addresses, tokens
from worker.settings import Settings
from worker.web import app as web

ROOT = Path(__file__).resolve().parents[2]
# An unsubscribe token: 88 characters of the base64url alphabet (worker/tokens.py).
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{88}")
# Anything that looks like an e-mail address.
ADDRESS_PATTERN = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")


@asynccontextmanager
async def serving(
    settings: Settings, *, database_url: str | None = None, redis_url: str | None = None
) -> AsyncIterator[str]:
    """Run the app on 127.0.0.1 (any free port) in this event loop; yield its base URL."""
    database_url = database_url or settings.database_url
    redis_url = redis_url or settings.redis_url
    assert database_url is not None and redis_url is not None
    server = web.server(web.create_app(settings, database_url, redis_url), host="127.0.0.1", port=0)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped during start-up")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def token_id(pool: asyncpg.Pool, client_id: str) -> int:
    value: int = await pool.fetchval("SELECT token_id FROM clients WHERE id = $1", client_id)
    return value


def email_hash(settings: Settings, address: str) -> bytes:
    return addresses.address_hash(settings.hash_key(), addresses.normalise(address))


def token_for(
    settings: Settings,
    address: str,
    client_token_id: int | None,
    *,
    locale: str = "en",
    key: bytes | None = None,
) -> str:
    """The token the worker would put in a message to `address` (None: marketing)."""
    claims = tokens.TokenClaims(
        client_id=client_token_id, email_hash=email_hash(settings, address), locale=locale
    )
    return tokens.sign(key or settings.signing_keys()[0], claims)


def unsubscribe_link(message: RecordedMessage) -> str:
    """The List-Unsubscribe URL of a received message."""
    return str(parse(message)["List-Unsubscribe"]).strip("<>")


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines the command printed (on stderr: stdout is its answer)."""
        lines = []
        for line in self.stderr.splitlines():
            if line.startswith("{"):
                lines.append(orjson.loads(line))
        return lines


def cli_environment(
    settings: Settings, overrides: Mapping[str, str | None] | None = None
) -> dict[str, str]:
    """The environment of `survey-worker` run with these settings; `overrides` sets
    variables, or removes those it maps to None."""
    env = {
        **os.environ,
        **settings.as_environment(),
        # Unset in the settings means embedded, whatever the test run's environment says.
        "DATABASE_URL": settings.database_url or "",
        "REDIS_URL": settings.redis_url or "",
        "LOG_FORMAT": "json",
    }
    for name, value in (overrides or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


async def start_cli(
    settings: Settings,
    *args: str,
    env: Mapping[str, str | None] | None = None,
    ctrl_c: bool = False,
) -> asyncio.subprocess.Process:
    """Start `survey-worker ARGS` in a subprocess (see `cli_environment` for `env`).

    With `ctrl_c` the command takes SIGINT as it does from a terminal, also when this test
    run was started as a background job, whose commands inherit SIGINT ignored (POSIX).
    """
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        env=cli_environment(settings, env),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_take_sigint if ctrl_c else None,
    )


def _take_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def launch_args(
    recipients: Path,
    *,
    client_id: str = "acme",
    survey_url: str = "https://survey.test/s",
    key: str | None = None,
) -> list[str]:
    """`launch` of a survey campaign from `recipients` (with an idempotency key if given)."""
    args = ["launch", "--client", client_id, "--template", "invitation"]
    args += ["--recipients", str(recipients), "--survey-url", survey_url]
    return args if key is None else [*args, "--idempotency-key", key]


async def cli(
    settings: Settings,
    *args: str,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 120,
) -> CliResult:
    """Run `survey-worker ARGS` in a subprocess against the test's Postgres and Redis
    (see `cli_environment` for `env`); one still running after `timeout` s is killed."""
    process = await start_cli(settings, *args, env=env)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        return CliResult(-9, "", f"killed: still running after {timeout} s")
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())


def assert_private(text: str) -> None:
    """Fail if `text` (logs) holds an unsubscribe token or link, or an e-mail address."""
    assert TOKEN_PATTERN.search(text) is None, "a token was logged"
    assert "/unsubscribe/" not in text
    found = ADDRESS_PATTERN.search(text)
    assert found is None, f"an address was logged: {found and found.group()}"


@contextmanager
def private_logs() -> Iterator[list[dict[str, Any]]]:
    """Capture the structlog lines of the block; on leaving it, `assert_private` them."""
    structlog.reset_defaults()
    with capture_logs() as logs:
        yield logs
    assert_private(orjson.dumps(logs, default=str).decode())
