"""Child processes of the bench: started in their own session, always stopped."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start(
    command: list[str], *, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `command` with stdout and stderr to `log`.

    Its own session: a Ctrl-C in the terminal reaches only the bench, which then stops
    its children in order (workers first) instead of all of them at once.
    """
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - commands built by the bench
            command,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(processes: list[subprocess.Popen[bytes]], *, timeout: float) -> list[int]:
    """SIGTERM every process, SIGKILL those still running after `timeout` seconds; return
    their exit statuses."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
    return [process.wait() for process in processes]


def tail(log: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
