"""Long-running `survey-worker` commands in tests: started as a user starts them, stopped
with SIGTERM as a service manager stops them, their logs checked for addresses and tokens.

    async with running(settings, "worker") as worker:
        ...
    worker.output  # what it printed, once stopped

    async with inbound(settings) as port:
        ...  # send bounces to 127.0.0.1:port
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.faults.harness import wait_until
from tests.support.web import CliResult, assert_private, start_cli
from worker.dev.embedded import free_port
from worker.settings import Settings

BOUNCE_DOMAIN = "bounces.test"


@dataclass
class Running:
    """A command started by `running`; `output` is its stdout and stderr once stopped."""

    process: asyncio.subprocess.Process
    output: str = ""


@asynccontextmanager
async def running(
    settings: Settings, *args: str, env: Mapping[str, str | None] | None = None
) -> AsyncIterator[Running]:
    """Run `survey-worker ARGS` (see `tests.support.web.cli_environment` for `env`) for
    the block. On leaving it, SIGTERM must stop the command with exit status 0, and its
    output must hold no address or token; a command still running on an error is killed."""
    command = Running(await start_cli(settings, *args, env=env))
    process = command.process
    try:
        yield command
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
        command.output = stdout.decode() + stderr.decode()
        assert process.returncode == 0, command.output
        assert_private(command.output)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def wait_listening(port: int) -> None:
    """Return once something accepts connections on 127.0.0.1:`port` (60 s at most)."""

    async def listening() -> bool:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()
        return True

    await wait_until(listening, timeout=60, what=f"a server on port {port}")


@asynccontextmanager
async def inbound(
    settings: Settings, env: Mapping[str, str | None] | None = None
) -> AsyncIterator[int]:
    """Run `survey-worker inbound` for BOUNCE_DOMAIN on a free port; yield the port once
    it listens. On leaving, SIGTERM must stop it cleanly, and its logs must hold no
    address or token."""
    port = free_port()
    async with running(
        settings,
        "inbound",
        "--port",
        str(port),
        env={"BOUNCE_DOMAIN": BOUNCE_DOMAIN, **(env or {})},
    ):
        await wait_listening(port)
        yield port


# --output values a command refuses before it reads, writes or audits anything, and the
# error naming why (`{tmp}`: the test's folder); `output_path` makes the argument.
REFUSED_OUTPUTS = [
    ("missing/out.file", "the folder {tmp}/missing does not exist"),
    ("", "must not be empty"),
]


def output_path(folder: Path, output: str) -> str:
    return str(folder / output) if output else ""


def assert_output_refused(result: CliResult, folder: Path, error: str) -> None:
    """`result` refused its --output in one line naming `error`, never a temporary file,
    and left `folder` empty."""
    assert result.code == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "'--output'" in result.stderr and error.format(tmp=folder) in result.stderr
    assert "atomic" not in result.stderr and ".tmp" not in result.stderr
    assert os.listdir(folder) == []
