"""Waiting for a server a test started as a subprocess (PgBouncer, Redis) to listen."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def wait_started(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Return once `process` accepts connections on 127.0.0.1:`port`; RuntimeError with
    the end of its `log` if it stops first, or if it does not listen within 30 s."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{Path(str(process.args[0])).name} stopped: {said}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{Path(str(process.args[0])).name} did not listen within 30 s")
