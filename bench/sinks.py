"""The SMTP sink the workers send to: Postfix's `smtp-sink`, or the built-in fallback."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import processes
from bench.errors import BenchError
from worker.dev.embedded import free_port

# Postfix installs its tools in sbin, which is not on an ordinary user's PATH.
SBIN = ("/usr/sbin", "/usr/local/sbin")
BACKLOG = "1000"
START_TIMEOUT = 10.0
UNPRIVILEGED = "nobody"
BUILTIN = "built-in aiosmtpd sink"


class SinkFailed(BenchError):
    """The sink did not start."""


def postfix_tool(name: str) -> str | None:
    """The path of a Postfix test tool (`smtp-sink`, `smtp-source`), or None."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN]))


@dataclass(frozen=True)
class Sink:
    """A running sink: what it is and where it listens."""

    label: str
    builtin: bool
    port: int
    pid: int


def _command(port: int, dump_dir: Path, builtin: bool) -> tuple[str, list[str]]:
    smtp_sink = None if builtin else postfix_tool("smtp-sink")
    if smtp_sink is None:
        return BUILTIN, [sys.executable, "-m", "bench.pysink", str(port), str(dump_dir)]
    privileges: list[str] = []
    if os.geteuid() == 0:
        # smtp-sink drops root for this user; it must be able to write the dumps.
        user = pwd.getpwnam(UNPRIVILEGED)
        os.chown(dump_dir, user.pw_uid, user.pw_gid)
        privileges = ["-u", UNPRIVILEGED]
    # One file per transaction, named "<minute>.<random hex>", with X-Rcpt-Args lines.
    dump = ["-d", f"{dump_dir}/%M."]
    return "Postfix smtp-sink", [smtp_sink, *privileges, *dump, f"127.0.0.1:{port}", BACKLOG]


def _await_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if process.poll() is not None:
            raise SinkFailed(f"the sink exited at start:\n{processes.tail(log)}")
        if time.monotonic() > deadline:
            raise SinkFailed(f"the sink does not listen after {START_TIMEOUT:.0f} s")
        time.sleep(0.05)


@contextlib.contextmanager
def running(dump_dir: Path, log: Path, *, builtin: bool) -> Iterator[Sink]:
    """Run a sink on a free port of 127.0.0.1 that dumps every message into `dump_dir`.

    Postfix's `smtp-sink` when installed (and `builtin` is false), else `bench.pysink`.
    """
    port = free_port()
    label, command = _command(port, dump_dir, builtin)
    process = processes.start(command, log=log)
    try:
        _await_listening(port, process, log)
        yield Sink(label, label == BUILTIN, port, process.pid)
    finally:
        processes.stop([process], timeout=10)
