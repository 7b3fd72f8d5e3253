"""Real Postgres servers a test starts with the embedded Postgres binaries (the `pgserver`
wheel): a primary, and a streaming standby made with `pg_basebackup -R` that the primary
commits to synchronously. Each listens on a free port of 127.0.0.1, its data in a
temporary folder of its own, deleted afterwards.

    with primary() as first, standby(first) as second:
        ...  # postgresql://postgres@127.0.0.1:{first.port},127.0.0.1:{second.port}/postgres
        first.stop("immediate")
        second.promote()

Postgres refuses to run as root: as root the servers run as the embedded Postgres's
system user (`survey-pg`, created when the test session's embedded Postgres started).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from worker.dev.embedded import PG_SYSTEM_USER, free_port, pg_bin

# The standby's `cluster_name`, which its WAL receiver gives the primary as its
# application_name: the name `synchronous_standby_names` waits for.
STANDBY_NAME = "standby"
TIMEOUT = 60


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError as e:
        raise RuntimeError(f"Postgres will not run as root and there is no {PG_SYSTEM_USER}") from e
    return PG_SYSTEM_USER


@dataclass(frozen=True)
class Server:
    """A Postgres cluster in `folder` (data in `folder/pgdata`) serving on `port`."""

    folder: Path
    port: int
    run_as: str | None

    @property
    def pgdata(self) -> Path:
        return self.folder / "pgdata"

    def run(self, program: str, *args: str) -> str:
        """Run one of the Postgres programs as the server's user; its stdout. RuntimeError
        with the end of its stderr when it fails."""
        result = subprocess.run(
            [str(pg_bin() / program), *args],
            user=self.run_as,
            group=self.run_as,
            extra_groups=[] if self.run_as else None,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed: {result.stderr.strip()[-1000:]}")
        return result.stdout

    def query(self, sql: str) -> str:
        """The unaligned result of `sql` (psql -At) on the server's `postgres` database."""
        return self.run(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-Atc", sql
        ).strip()

    def start(self, *settings: str) -> None:
        """Start the server on its port, with `settings` (`name=value`) on its command line."""
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            "-c unix_socket_directories=''",
            *(f"-c {setting}" for setting in settings),
        ]
        self.run(
            "pg_ctl",
            *("-D", str(self.pgdata), "-l", str(self.folder / "server.log")),
            *("-w", "-t", str(TIMEOUT), "-o", " ".join(options), "start"),
        )

    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Stop the server: `immediate` as if it crashed (no shutdown checkpoint, clients
        cut off), `fast` rolling back what runs and closing the connections."""
        self.run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop")

    def promote(self) -> None:
        """Promote a standby to a primary; return once it takes writes."""
        self.run("pg_ctl", "-D", str(self.pgdata), "-w", "-t", str(TIMEOUT), "promote")


@contextmanager
def _cluster() -> Iterator[Server]:
    """A folder and a port for a server; on leaving, the server stopped and the folder gone."""
    run_as = _run_as()
    folder = Path(tempfile.mkdtemp(prefix="pg-server-"))
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    server = Server(folder, free_port(), run_as)
    try:
        yield server
    finally:
        try:
            if server.running():
                server.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def primary() -> Iterator[Server]:
    """A primary (`wal_level=replica`, trust authentication, replication allowed from
    127.0.0.1) whose commits wait for the standby named STANDBY_NAME to flush them.

    Until such a standby streams from it, a commit waits: start one with `standby`
    before writing. The setting is on the server's command line, not in its files, so a
    standby copied from it and promoted does not wait for a standby of its own.
    """
    with _cluster() as server:
        server.run(
            "initdb",
            *("-D", str(server.pgdata), "-U", "postgres", "--auth=trust"),
            *("-E", "UTF8", "--locale=C", "--no-sync"),
        )
        server.start("wal_level=replica", f"synchronous_standby_names={STANDBY_NAME}")
        yield server


@contextmanager
def standby(of: Server) -> Iterator[Server]:
    """A hot standby of the primary `of`, copied with `pg_basebackup -R` (which writes
    its `primary_conninfo` and `standby.signal`); returns once `of` reports it as its
    synchronous standby."""
    with _cluster() as server:
        server.run(
            "pg_basebackup",
            *("-D", str(server.pgdata), "-h", "127.0.0.1", "-p", str(of.port)),
            *("-U", "postgres", "-R", "-X", "stream", "--checkpoint=fast", "--no-sync"),
        )
        server.start(f"cluster_name={STANDBY_NAME}")
        deadline = time.monotonic() + TIMEOUT
        state = ""
        while state != "sync":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standby is not synchronous ({state or 'not streaming'})")
            time.sleep(0.1)
            state = of.query(
                "SELECT sync_state FROM pg_stat_replication "
                f"WHERE application_name = '{STANDBY_NAME}' AND state = 'streaming'"
            )
        yield server
