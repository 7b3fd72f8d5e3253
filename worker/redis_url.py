"""The one reading of a Redis URL: every process's Redis connection is made from it.

`Settings.queue_url` hands on REDIS_URL with REDIS_CA_FILE, REDIS_SENTINELS,
REDIS_SENTINEL_MASTER and REDIS_SENTINEL_PASSWORD added as query parameters (`ca_file`,
`sentinels`, `sentinel_master`, `sentinel_password`), so one string carries them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from worker.settings import redis_url_problem, sentinel_addresses


@dataclass(frozen=True)
class RedisTarget:
    """Where a Redis is and how to log in to it. With `sentinels`, `host` and `port` are
    unused: the primary is whichever one the Sentinels name for `sentinel_master`."""

    host: str = "localhost"
    port: int = 6379
    socket_path: str | None = None
    database: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str | None = None
    sentinel_password: str | None = None

    def client_options(self) -> dict[str, object]:
        """redis-py's keyword arguments for a connection to the primary (no address)."""
        options: dict[str, object] = {
            "db": self.database,
            "username": self.username,
            "password": self.password,
        }
        if self.tls:
            options["ssl"] = True
            options["ssl_ca_certs"] = None if self.ca_file is None else str(self.ca_file)
            options["ssl_cert_reqs"] = "required"
        return options


def parse(url: str) -> RedisTarget:
    """The target of a `redis://`, `rediss://` or `unix://` URL: user and password
    percent-decoded (RFC 3986, section 2.1), the database from the path or `?db=`.
    ValueError (never quoting the URL) for one that cannot work."""
    problem = redis_url_problem(url)
    if problem:
        raise ValueError(problem)
    parts = urlsplit(url)
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    if parts.scheme == "unix":
        database = query.get("db", "0")
    else:
        database = query.get("db", parts.path.lstrip("/") or "0")
    sentinels = query.get("sentinels")
    ca_file = query.get("ca_file")
    return RedisTarget(
        host=parts.hostname or "localhost",
        port=parts.port or 6379,
        socket_path=parts.path if parts.scheme == "unix" else None,
        database=int(database),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "rediss",
        ca_file=Path(ca_file) if ca_file else None,
        sentinels=tuple(sentinel_addresses(sentinels)) if sentinels else (),
        sentinel_master=query.get("sentinel_master"),
        sentinel_password=query.get("sentinel_password"),
    )
