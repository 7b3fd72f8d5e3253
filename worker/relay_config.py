"""The relays mail leaves through, as configured: `SMTP_RELAYS=NAME,NAME…` with each
relay's `SMTP_RELAY_<NAME>_URL` (and optional `_RATE`, `_CONNECTIONS`, `_WEIGHT`), or the
`SMTP_HOST`… settings as one relay named `default`.

Every problem is a `ConfigError` naming the variable; none quotes a URL, which may hold a
password.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar
from urllib.parse import unquote, urlsplit

from worker.errors import ConfigError

if TYPE_CHECKING:
    from worker.settings import Settings

Tls = Literal["none", "starttls", "tls"]
T = TypeVar("T", int, float)

DEFAULT_NAME = "default"
# A relay's name: it is part of its variables' names (upper-cased) and of metric labels.
NAME = re.compile(r"[a-z0-9_]+")
# The URL schemes, with the TLS each asks for and its port when the URL names none.
SCHEMES: dict[str, tuple[Tls, int]] = {
    "smtp": ("none", 25),
    "smtp+starttls": ("starttls", 587),
    "smtps": ("tls", 465),
}
MAX_CONNECTIONS = 200


@dataclass(frozen=True)
class Relay:
    """One SMTP relay: where it is, how to talk to it and how much of the mail it takes.

    `rate` is the relay's own limit in messages per second, shared by all workers (None:
    none); `weight` its share of a route's messages (0: a standby, used only while every
    weighted relay of the route is in trouble).
    """

    name: str
    host: str
    port: int
    tls: Tls
    timeout: float
    connections: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    rate: float | None = None
    weight: int = 1


def variable(name: str, suffix: str) -> str:
    """The environment variable of relay `name`'s setting `suffix` (`URL`, `RATE`…)."""
    return f"SMTP_RELAY_{name.upper()}_{suffix}"


def parse_names(text: str) -> list[str]:
    """SMTP_RELAYS's names, in order; ConfigError for an empty, malformed or repeated one."""
    names = [part.strip() for part in text.split(",")]
    for at, name in enumerate(names):
        if not name:
            raise ConfigError("SMTP_RELAYS: an empty name (write NAME,NAME… with no blank)")
        if not NAME.fullmatch(name):
            raise ConfigError(
                f"SMTP_RELAYS: {name!r} is not a relay name (lower-case letters, digits and _)"
            )
        if name in names[:at]:
            raise ConfigError(f"SMTP_RELAYS: {name!r} is named twice")
    return names


def relay_names(settings: Settings) -> list[str]:
    """The names of the configured relays, in SMTP_RELAYS's order (`default` without it)."""
    if settings.smtp_relays is None:
        return [DEFAULT_NAME]
    return parse_names(settings.smtp_relays)


def relays(settings: Settings) -> list[Relay]:
    """The configured relays, in SMTP_RELAYS's order: each from its SMTP_RELAY_<NAME>_
    variables, or the one named `default` that SMTP_HOST… describe. ConfigError for any
    unusable value, or when every relay is a standby."""
    if settings.smtp_relays is None:
        password = settings.smtp_password
        return [
            Relay(
                name=DEFAULT_NAME,
                host=settings.smtp_host,
                port=settings.smtp_port,
                tls=settings.smtp_tls,
                timeout=settings.smtp_timeout,
                connections=settings.smtp_connections,
                username=settings.smtp_username,
                password=None if password is None else password.get_secret_value(),
            )
        ]
    values = settings.relay_variables()
    found = [_configured(name, values, settings) for name in parse_names(settings.smtp_relays)]
    if not any(relay.weight for relay in found):
        raise ConfigError(
            "SMTP_RELAY_<NAME>_WEIGHT: every relay has weight 0 (a standby); "
            "at least one must carry the mail"
        )
    return found


def _configured(name: str, values: Mapping[str, str], settings: Settings) -> Relay:
    """Relay `name` from its variables in `values`."""
    url = values.get(variable(name, "URL"))
    if url is None:
        raise ConfigError(
            f"{variable(name, 'URL')}: must be set for the relay {name} SMTP_RELAYS names"
        )
    rate = _value(
        values, name, "RATE", float, lambda v: math.isfinite(v) and v >= 0, "a number, 0 or more"
    )
    connections = _value(
        values, name, "CONNECTIONS", int, lambda v: 1 <= v <= MAX_CONNECTIONS, "from 1 to 200"
    )
    weight = _value(values, name, "WEIGHT", int, lambda v: v >= 0, "a whole number, 0 or more")
    return from_url(
        name,
        url,
        timeout=settings.smtp_timeout,
        connections=settings.smtp_connections if connections is None else connections,
        rate=rate or None,
        weight=1 if weight is None else weight,
    )


def _value(
    values: Mapping[str, str],
    name: str,
    suffix: str,
    parse: Callable[[str], T],
    fits: Callable[[T], bool],
    expected: str,
) -> T | None:
    """Relay `name`'s variable `suffix` parsed, None when it is unset; ConfigError saying
    what is `expected` when it does not parse or fit."""
    text = values.get(variable(name, suffix))
    if text is None:
        return None
    try:
        value = parse(text.strip())
    except ValueError:
        raise ConfigError(f"{variable(name, suffix)}: must be {expected}") from None
    if not fits(value):
        raise ConfigError(f"{variable(name, suffix)}: must be {expected}")
    return value


def from_url(
    name: str,
    url: str,
    *,
    timeout: float,
    connections: int,
    rate: float | None = None,
    weight: int = 1,
) -> Relay:
    """Relay `name` from its URL (`smtp://`, `smtp+starttls://` or `smtps://`, user and
    password percent-decoded) and the other settings given; ConfigError naming
    SMTP_RELAY_<NAME>_URL, never quoting the URL, when it cannot be one."""
    where = variable(name, "URL")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        # A bad port, a bracket that does not close: urlsplit says which, quoting the URL.
        raise ConfigError(
            f"{where}: not a valid URL (is the port a number from 1 to 65535? a '/', '?', "
            "'#' or '@' in the password is written %2F, %3F, %23, %40)"
        ) from None
    if parts.scheme.lower() not in SCHEMES:
        raise ConfigError(f"{where}: not an smtp://, smtp+starttls:// or smtps:// URL")
    tls, default_port = SCHEMES[parts.scheme.lower()]
    host = parts.hostname or ""
    if not host or any(c.isspace() or not c.isprintable() for c in host):
        raise ConfigError(f"{where}: names no host (smtp://user:password@host:port)")
    if port == 0:
        raise ConfigError(f"{where}: the port is not a number from 1 to 65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(
            f"{where}: has a path, query or fragment (a '/', '?' or '#' in the password is "
            "written %2F, %3F, %23)"
        )
    username = unquote(parts.username) if parts.username else None
    password = None if parts.password is None else unquote(parts.password)
    if password is not None and username is None:
        raise ConfigError(f"{where}: has a password but no user name")
    return Relay(
        name=name,
        host=host,
        port=port or default_port,
        tls=tls,
        timeout=timeout,
        connections=connections,
        username=username,
        password=password,
        rate=rate,
        weight=weight,
    )
