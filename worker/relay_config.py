"""The relays mail leaves through, as configured: `SMTP_RELAYS=NAME,NAME…` with each
relay's `SMTP_RELAY_<NAME>_URL` (and optional `_RATE`, `_CONNECTIONS`, `_WEIGHT`), or the
`SMTP_HOST`… settings as one relay named `default`. Either way a relay's optional `_SPF`
and `_DKIM` say how it authenticates a client's mail (checked by `client check`).

Every problem is a `ConfigError` naming the variable; none quotes a URL, which may hold a
password.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
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
# SMTP_RELAY_<NAME>_DKIM's value for a relay that signs with the client's own domain.
DKIM_CLIENT = "client"
_DOMAIN = re.compile(r"(?=.{1,253}$)(?:[a-z0-9_](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
# The SPF mechanisms (RFC 7208 section 5) that can name a relay: `include:` or `exists:`
# a domain, `a` or `mx` (of a domain, with a prefix length), `ip4:` or `ip6:` a network.
_SPF_DOMAIN = re.compile(r"\+?(include|exists):(\S+)")
_SPF_HOST = re.compile(r"\+?(a|mx)(?::([^/\s]+))?(/\d{1,3}(//\d{1,3})?)?")
_SPF_NETWORK = re.compile(r"\+?(ip4|ip6):(\S+)")


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
    # The mechanism an envelope domain's SPF must hold for this relay (None: unknown).
    spf: str | None = None
    # `client` (signs with the client's domain and selector), the domain it signs with
    # (its own), or None: unknown.
    dkim: str | None = None


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
        spf, dkim = authentication(DEFAULT_NAME, settings.relay_variables())
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
                spf=spf,
                dkim=dkim,
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
    relay = from_url(
        name,
        url,
        timeout=settings.smtp_timeout,
        connections=settings.smtp_connections if connections is None else connections,
        rate=rate or None,
        weight=1 if weight is None else weight,
    )
    spf, dkim = authentication(name, values)
    return replace(relay, spf=spf, dkim=dkim)


def authentication(name: str, values: Mapping[str, str]) -> tuple[str | None, str | None]:
    """Relay `name`'s SMTP_RELAY_<NAME>_SPF and _DKIM from `values`, normalised (`spf`,
    `dkim`: None when unset); ConfigError naming the variable for a value that is not an
    SPF mechanism, or neither `client` nor a domain."""
    spf = values.get(variable(name, "SPF"))
    dkim = values.get(variable(name, "DKIM"))
    if spf is not None:
        spf = spf_mechanism(spf)
        if spf is None:
            raise ConfigError(
                f"{variable(name, 'SPF')}: must be one SPF mechanism, e.g. "
                "include:amazonses.com or ip4:203.0.113.0/24"
            )
    if dkim is not None:
        dkim = dkim.strip().lower().rstrip(".")
        if dkim != DKIM_CLIENT and not _DOMAIN.fullmatch(dkim):
            raise ConfigError(
                f"{variable(name, 'DKIM')}: must be `client` (the relay signs with the "
                "client's domain) or the domain the relay signs with"
            )
    return spf, dkim


def spf_mechanism(text: str) -> str | None:
    """`text` as one SPF mechanism that authorises a relay (RFC 7208 section 5), lower
    case, without a `+` qualifier; None when it is not one."""
    text = text.strip().lower().removeprefix("+")
    if found := _SPF_DOMAIN.fullmatch(text):
        return text if _DOMAIN.fullmatch(found.group(2).rstrip(".")) else None
    if found := _SPF_HOST.fullmatch(text):
        domain = found.group(2)
        return text if domain is None or _DOMAIN.fullmatch(domain.rstrip(".")) else None
    if found := _SPF_NETWORK.fullmatch(text):
        try:
            network = ipaddress.ip_network(found.group(2), strict=False)
        except ValueError:
            return None
        return text if network.version == int(found.group(1)[-1]) else None
    return None


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
