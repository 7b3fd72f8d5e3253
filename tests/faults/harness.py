"""Real worker processes for the fault-injection suite, and ways to wait on the ledger."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from tests.support.smtp import RecordingHandler
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def env_for(settings: Settings) -> dict[str, str]:
    """The environment that gives a subprocess exactly these settings."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/"),
        **settings.as_environment(),
        "LOG_FORMAT": "json",
    }


def relays(settings: Settings, urls: dict[str, str], **more: str) -> Settings:
    """`settings` with SMTP_RELAYS naming `urls`' relays, each at its URL (and `more`
    SMTP_RELAY_… variables)."""
    variables = {f"SMTP_RELAY_{name.upper()}_URL": url for name, url in urls.items()}
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{**settings.model_dump(), "smtp_relays": ",".join(urls)},
        smtp_relay_variables={**variables, **more},
    )


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `survey-worker ARGS` as a process with these settings."""
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=env_for(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class WorkerProcess:
    """`python -m worker worker` in a subprocess, its output kept in a log file."""

    def __init__(self, settings: Settings, log_dir: Path, name: str) -> None:
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker", "worker"],
            env=env_for(settings),
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._log.close()

    async def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then wait for the process to exit; returns its exit status."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(10)
        self._log.close()
        return code

    def stop(self) -> None:
        """Make sure the process is gone (test teardown)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if not self._log.closed:
            self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 60, what: str = "condition"
) -> None:
    """Poll `check` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass  # Postgres may be down on purpose: try again.
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def campaign_status(database_url: str, campaign_id: int) -> str | None:
    conn = await asyncpg.connect(database_url)
    try:
        status: str | None = await conn.fetchval(
            "SELECT status FROM campaigns WHERE id = $1", campaign_id
        )
        return status
    finally:
        await conn.close()


async def ledger_rows(database_url: str, campaign_id: int) -> dict[str, asyncpg.Record]:
    """Each invitation of the campaign by address."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT * FROM invitations WHERE campaign_id = $1", campaign_id)
    finally:
        await conn.close()
    return {r["email"]: r for r in rows}


async def received_at_least(handler: RecordingHandler, n: int) -> None:
    """Wait until the test SMTP server has accepted `n` messages."""

    async def check() -> bool:
        return len(handler.messages) >= n

    await wait_until(check, what=f"{n} messages")
