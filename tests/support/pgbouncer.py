"""A real PgBouncer (Debian's /usr/sbin/pgbouncer) in front of a test database.

    with pgbouncer(database_url, pool_mode="transaction") as url:
        ...  # url reaches the same database through PgBouncer

Its ini and userlist are written in a folder of its own (auth_type trust; the user must
still be in the userlist). PgBouncer refuses to run as root: as root it runs as the user
the embedded Postgres runs as. `ignore_startup_parameters` is left at its default, so a
client that passes a startup parameter such as `synchronous_commit` is refused, as a
stock installation refuses it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests.support.daemons import wait_started
from worker.dev.embedded import PG_SYSTEM_USER, free_port

BINARY = Path("/usr/sbin/pgbouncer")


def _run_as() -> str | None:
    if os.getuid() != 0:
        return None
    for user in (PG_SYSTEM_USER, "postgres"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return user
    raise RuntimeError("PgBouncer will not run as root and there is no other user to run it")


@contextmanager
def pgbouncer(database_url: str, *, pool_mode: str, pool_size: int = 20) -> Iterator[str]:
    """Run PgBouncer for the block, in `pool_mode`, in front of `database_url`'s database;
    yield the URL that reaches that database through it."""
    parts = urlsplit(database_url)
    user = parts.username or "postgres"
    database = parts.path.lstrip("/")
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    run_as = _run_as()
    (folder / "userlist.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
{database} = host={parts.hostname} port={parts.port or 5432} dbname={database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/userlist.txt
pool_mode = {pool_mode}
default_pool_size = {pool_size}
max_client_conn = 500
logfile = {folder}/pgbouncer.log
pidfile =
admin_users = {user}
"""
    )
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        for path in (folder, *folder.iterdir()):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    process = subprocess.Popen(
        [str(BINARY), str(folder / "pgbouncer.ini")],
        user=run_as,
        group=run_as,
        extra_groups=[] if run_as else None,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_started(port, process, folder / "pgbouncer.log")
        netloc = f"{user}@127.0.0.1:{port}"
        yield urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
