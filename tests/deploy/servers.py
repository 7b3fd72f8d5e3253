"""What a production user brings: Debian's own Postgres and Redis servers, started here on
free loopback ports, and the project's wheel installed into a fresh virtualenv."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tests.support.system import free_port, missing

ROOT = Path(__file__).resolve().parents[2]
# Postgres refuses to run as root; Debian's package creates this user.
DEBIAN_PG_USER = "postgres"
SUPERUSER_PASSWORD = "deploy-test-superuser"


def _debian_pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if not found:
        missing("Debian's postgresql is not installed (apt-get install postgresql)")
    return found[-1].parent


@dataclass(frozen=True)
class Postgres:
    """A running Postgres cluster: superuser access through its socket folder."""

    port: int
    socket_dir: Path

    async def execute(self, *statements: str, database: str = "postgres") -> None:
        """Run each statement as the superuser, outside a transaction."""
        conn = await asyncpg.connect(
            host=str(self.socket_dir), port=self.port, user="postgres", database=database
        )
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    def url(self, user: str, password: str, database: str) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"


def _as_postgres_user() -> dict[str, object]:
    if os.geteuid() != 0:
        return {}
    return {"user": DEBIAN_PG_USER, "group": DEBIAN_PG_USER, "extra_groups": []}


@contextmanager
def debian_postgres() -> Iterator[Postgres]:
    """A fresh cluster of Debian's Postgres: password logins over TCP (scram), trust on
    its private socket for the test's own administration."""
    bin_dir = _debian_pg_bin()
    as_user = _as_postgres_user()
    folder = Path(tempfile.mkdtemp(prefix="survey-deploy-pg-"))
    if as_user:
        entry = pwd.getpwnam(DEBIAN_PG_USER)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    pgdata, port = folder / "pgdata", free_port()
    try:
        subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            **as_user,  # type: ignore[arg-type]
        )
        subprocess.run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(pgdata),
                "-l",
                str(folder / "server.log"),
                "-w",
                "-o",
                f"-p {port} -c listen_addresses=127.0.0.1 -k {folder}",
                "start",
            ],
            check=True,
            capture_output=True,
            **as_user,  # type: ignore[arg-type]
        )
        yield Postgres(port, folder)
    finally:
        subprocess.run(
            [str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
            **as_user,  # type: ignore[arg-type]
        )
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def debian_redis() -> Iterator[int]:
    """Debian's redis-server on a free loopback port; yields the port."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        missing("Debian's redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


@dataclass(frozen=True)
class Installation:
    """The project's wheel installed into a virtualenv of its own."""

    wheel: Path
    bin_dir: Path

    def has_module(self, name: str) -> bool:
        found = subprocess.run(
            [
                str(self.bin_dir / "python"),
                "-c",
                f"import importlib.util, sys; sys.exit(importlib.util.find_spec({name!r}) is None)",
            ],
            check=False,
        )
        return found.returncode == 0


@contextmanager
def installed_wheel() -> Iterator[Installation]:
    """Build the wheel and install it as the Dockerfile does into a new virtualenv: the
    dependencies from requirements.lock by hash, then the wheel alone (no editable install,
    no extras). A lock that misses a dependency fails here."""
    folder = Path(tempfile.mkdtemp(prefix="survey-deploy-venv-"))
    try:
        dist = folder / "dist"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "-w",
                str(dist),
                str(ROOT),
            ],
            check=True,
            capture_output=True,
        )
        (wheel,) = dist.glob("*.whl")
        venv = folder / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps"]
        lock = ["--require-hashes", "-r", str(ROOT / "requirements.lock")]
        subprocess.run([*pip, *lock], check=True, capture_output=True)
        subprocess.run([*pip, str(wheel)], check=True, capture_output=True)
        yield Installation(wheel, venv / "bin")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class Result:
    """What a command printed and how it exited."""

    code: int
    stdout: str
    stderr: str


class Shell:
    """Runs the installed `survey-worker` the way a user's shell does: in a working folder
    of its own, with exported variables and a `.env` file there."""

    def __init__(self, installation: Installation, cwd: Path, env: dict[str, str]) -> None:
        self.installation = installation
        self.cwd = cwd
        # A clean environment: nothing of the test process (no TEST_*, no APP_ENV) leaks in.
        self.env = {"PATH": f"{installation.bin_dir}:/usr/bin:/bin", "HOME": str(cwd), **env}

    def _argv(self, args: list[str]) -> list[str]:
        return [str(self.installation.bin_dir / "survey-worker"), *args]

    async def run(self, args: list[str], env: dict[str, str] | None = None) -> Result:
        process = await self.start(args, env, capture=True)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode is not None
        return Result(process.returncode, stdout.decode(), stderr.decode())

    async def python(self, code: str) -> str:
        """What the installation's interpreter prints running `code`."""
        process = await asyncio.create_subprocess_exec(
            str(self.installation.bin_dir / "python"),
            "-c",
            code,
            cwd=self.cwd,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
        )
        stdout, _ = await process.communicate()
        assert process.returncode == 0
        return stdout.decode()

    async def start(
        self, args: list[str], env: dict[str, str] | None = None, *, capture: bool = False
    ) -> asyncio.subprocess.Process:
        pipe = asyncio.subprocess.PIPE
        return await asyncio.create_subprocess_exec(
            *self._argv(args),
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            stdout=pipe if capture else asyncio.subprocess.DEVNULL,
            stderr=pipe if capture else asyncio.subprocess.DEVNULL,
        )
