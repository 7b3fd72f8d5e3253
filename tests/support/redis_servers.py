"""Real Redis servers (Debian's `redis-server`) started by a test: a primary with a password
and ACL users, and Sentinels (`redis-server --sentinel`) watching it.

    with redis_server(tmp, password="p/w:d@x+=") as port:
        with sentinel(tmp, master_port=port, master="survey", auth="p/w:d@x+=") as s_port:
            ...
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.support.daemons import wait_started
from worker.dev.embedded import free_port

BINARY = Path(shutil.which("redis-server") or "/usr/bin/redis-server")


def _quote(value: str) -> str:
    """A value as redis.conf reads it: in double quotes, backslash and quote escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextmanager
def _serving(folder: Path, config: str, *extra: str, tls: bool = False) -> Iterator[int]:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "redis.conf"
    listen = f"port 0\ntls-port {port}" if tls else f"port {port}"
    conf.write_text(
        f'{listen}\nbind 127.0.0.1\ndir {folder}\nsave ""\nappendonly no\n'
        f"logfile {folder / 'redis.log'}\n{config}"
    )
    process = subprocess.Popen(
        [str(BINARY), str(conf), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_started(port, process, folder / "redis.log")
        yield port
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def redis_server(
    folder: Path,
    *,
    password: str | None = None,
    users: Sequence[tuple[str, str]] = (),
    tls: tuple[Path, Path] | None = None,
    replica_of: int | None = None,
) -> Iterator[int]:
    """A Redis on a free port for the block: `requirepass password` (the default user's),
    each (user, password) of `users` an ACL user allowed everything, and with `tls`
    (certificate chain, key; PEM) TLS only, clients not asked for a certificate. With
    `replica_of` it replicates the Redis on that port (logging in with `password`)."""
    config = "" if password is None else f"requirepass {_quote(password)}\n"
    for user, secret in users:
        config += f"user {user} on {_quote('>' + secret)} ~* &* +@all\n"
    if replica_of is not None:
        config += f"replicaof 127.0.0.1 {replica_of}\n"
        if password is not None:
            config += f"masterauth {_quote(password)}\n"
    if tls is not None:
        config += f"tls-cert-file {tls[0]}\ntls-key-file {tls[1]}\ntls-auth-clients no\n"
    with _serving(folder, config, tls=tls is not None) as port:
        yield port


@contextmanager
def sentinel(
    folder: Path,
    *,
    master_port: int,
    master: str,
    auth: str | None = None,
    password: str | None = None,
) -> Iterator[int]:
    """A Sentinel watching the Redis on 127.0.0.1:`master_port` as `master` (logging in
    with `auth`), itself asking clients for `password` when given."""
    config = f"sentinel monitor {master} 127.0.0.1 {master_port} 1\n"
    config += f"sentinel down-after-milliseconds {master} 1000\n"
    config += f"sentinel failover-timeout {master} 5000\n"
    if auth is not None:
        config += f"sentinel auth-pass {master} {_quote(auth)}\n"
    if password is not None:
        config += f"requirepass {_quote(password)}\n"
    with _serving(folder, config, "--sentinel") as port:
        yield port
