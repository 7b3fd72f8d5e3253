"""Configuration, read from the environment and `.env` (pydantic-settings)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from worker import durations, passwords, relay_config
from worker.errors import ConfigError
from worker.message import DEFAULT_FIRM_NAME, UNSAFE_IN_HEADER
from worker.resources import bundled

PLACEHOLDER_PREFIX = "change-me"
POSTGRES_SCHEMES = ("postgresql", "postgres")
# The schemes arq's RedisSettings.from_dsn understands.
REDIS_SCHEMES = ("redis", "rediss", "unix")
# Where Amazon SNS serves the certificates that sign its messages, in every region.
SNS_CERT_HOSTS = r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$"
# A domain name of at least two labels (letters, digits, hyphens; no leading or trailing -).
# PRIVACY_CONTACT: mailto:ADDRESS, or an https:// URL with a host; nothing a page could
# not show as a plain link (no spaces, quotes or angle brackets).
_MAILTO = re.compile(r"mailto:[^@\s\"'<>?]+@[a-z0-9.-]+\.[a-z]{2,63}", re.IGNORECASE)
_URL_UNSAFE = re.compile(r"[\s\"'<>\\]|[\x00-\x1f\x7f]")


def _is_contact(value: str) -> bool:
    """Whether PRIVACY_CONTACT's value is a mailto: address or an https:// URL."""
    if _URL_UNSAFE.search(value):
        return False
    if value.lower().startswith("mailto:"):
        return bool(_MAILTO.fullmatch(value))
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return False
    return parts.scheme == "https" and bool(parts.hostname) and (port is None or port > 0)


_DOMAIN = re.compile(r"(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


def _port_problem(hostspec: str) -> str | None:
    """What is wrong with the port of `host[:port]` or `[v6]:port`, or None."""
    after_host = hostspec.rpartition("]")[2] if hostspec.startswith("[") else hostspec
    _, colon, port = after_host.partition(":")
    # Never quote the value: a password with an unescaped '/' or '?' ends up here.
    if colon and not (port.isdigit() and 1 <= int(port) <= 65535):
        return "the port is not a number from 1 to 65535"
    return None


def postgres_url_problem(url: str) -> str | None:
    """Why `url` cannot be a Postgres URL (asyncpg's DSN, several hosts allowed), or None.

    The answer never quotes the URL: it may hold a password.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in POSTGRES_SCHEMES:
        return "not a postgresql:// URL"
    hosts = parts.netloc.rpartition("@")[2]
    ports = parse_qs(parts.query).get("port", [])
    for problem in (
        *(_port_problem(spec) for spec in hosts.split(",")),
        *(_port_problem(f"h:{port}") for value in ports for port in value.split(",")),
    ):
        if problem:
            return problem
    return None


def redis_url_problem(url: str) -> str | None:
    """Why `url` cannot be a Redis URL as arq reads it, or None (never quoting the URL)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in REDIS_SCHEMES:
        return "not a redis://, rediss:// or unix:// URL"
    if parts.scheme == "unix":
        return None if parts.path else "a unix:// URL needs the socket's path"
    problem = _port_problem(parts.netloc.rpartition("@")[2])
    if problem:
        return problem
    database = parse_qs(parts.query).get("db", [parts.path.lstrip("/") or "0"])[0]
    if not database.isdigit():
        return "the database is not a number"
    return None


def sentinel_addresses(text: str) -> list[tuple[str, int]]:
    """REDIS_SENTINELS (`host:port,host:port`, `[v6]:port` allowed) as (host, port) pairs;
    ValueError saying what is wrong."""
    found = []
    for spec in (part.strip() for part in text.split(",")):
        if not spec:
            continue
        host, colon, port = spec.rpartition(":")
        host = host.strip("[]")
        if not colon or not host:
            raise ValueError("each Sentinel is host:port, e.g. sentinel-1:26379,sentinel-2:26379")
        if not (port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError("a Sentinel's port is not a number from 1 to 65535")
        found.append((host, int(port)))
    if not found:
        raise ValueError("names no Sentinel (host:port,host:port)")
    return found


def resolver_address(text: str) -> tuple[str, int]:
    """DNS_RESOLVER (`host:port`, `host`, `[v6]:port`; the host an IP address, the port 53
    unless given) as (address, port); ValueError saying what is expected."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") if rest.startswith(":") else ("" if not rest else "x")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(
            "must be a resolver's IP address with an optional port: 127.0.0.1:5353, "
            "[2001:db8::53]:53 or 192.0.2.53"
        ) from None
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError("the port is not a number from 1 to 65535")
    return address, int(port) if port else 53


def parse_contact_cap(text: str) -> tuple[int, timedelta]:
    """`K/DURATION` (e.g. `2/30d`) as (K, window); ValueError saying what is expected."""
    count, slash, window = text.partition("/")
    if not slash or not count.strip().isdigit() or not 1 <= int(count) <= 1000:
        raise ValueError("must be K/DURATION with K from 1 to 1000, e.g. 2/30d")
    return int(count), durations.parse(window)


def webhook_secret_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret `whsec_<base64>`: the decoded part, at
    least 16 bytes. ValueError, never quoting the secret, for anything else."""
    encoded = secret.strip().removeprefix("whsec_")
    if encoded == secret.strip():
        raise ValueError("must be whsec_ followed by the base64 key the survey platform shows")
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after whsec_ is not base64") from None
    if len(key) < 16:
        raise ValueError("the key after whsec_ is shorter than 16 bytes")
    return key


def location(url: str) -> str:
    """Where `url` points, for messages: host, port and path, without user, password or
    query (which may hold a password too)."""
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2] + parts.path


# The key under which `_RelayVariables` hands the SMTP_RELAY_<NAME>_… variables to Settings
# (also accepted as a keyword argument: Settings(smtp_relays="a", smtp_relay_variables={…})).
RELAY_VARIABLES = "smtp_relay_variables"
_RELAY_PREFIX = "smtp_relay_"


class _RelayVariables(PydanticBaseSettingsSource):
    """The SMTP_RELAY_<NAME>_… variables, from the environment and the `.env` file (the
    environment wins): their names depend on SMTP_RELAYS, so no field can declare them."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        environment: EnvSettingsSource,
        dotenv: DotEnvSettingsSource,
    ) -> None:
        super().__init__(settings_cls)
        self._sources = (dotenv, environment)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        # Both sources hold every variable they read, names lower-cased; blank ones are unset.
        found = {
            name.upper(): value
            for source in self._sources
            for name, value in source.env_vars.items()
            if name.startswith(_RELAY_PREFIX) and value and value.strip()
        }
        return {RELAY_VARIABLES: found}


@dataclass(frozen=True)
class ServiceUrls:
    """Where the database and the job queue are (configured, or the embedded servers)."""

    database_url: str
    redis_url: str


class Settings(BaseSettings):
    """Every knob of the worker, the web app and the CLI; see `.env.example`."""

    # An empty value (`SMTP_USERNAME=` as in .env.example) means "not set", not "".
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    app_env: Literal["production", "demo", "test"] = "production"
    database_url: str | None = None
    # `transaction`: DATABASE_URL is a PgBouncer in transaction pooling (docs/scaling.md).
    database_pool_mode: Literal["session", "transaction"] = "session"
    redis_url: str | None = None
    # A CA bundle (PEM) that signs the certificate of a rediss:// server.
    redis_ca_file: Path | None = None
    # Sentinels (`host:port,...`) and the primary's name: they replace REDIS_URL's host.
    redis_sentinels: str | None = None
    redis_sentinel_master: str | None = None
    redis_sentinel_password: SecretStr | None = None
    data_dir: Path = Path(".data")

    smtp_host: str = "localhost"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_tls: Literal["none", "starttls", "tls"] = "starttls"
    smtp_timeout: float = Field(default=30.0, gt=0)
    # Several relays: NAME,NAME… each described by SMTP_RELAY_<NAME>_URL (worker/relay_config.py);
    # set, the SMTP_HOST… settings above are not used.
    smtp_relays: str | None = None

    public_base_url: str = "https://unsubscribe.example.com"
    # Where the invalid-link page sends a person (questions about their data, another way to
    # unsubscribe): a mailto: address or an https:// URL; unset, the page says to contact
    # the sender.
    privacy_contact: str | None = None
    unsubscribe_secrets: SecretStr = SecretStr(PLACEHOLDER_PREFIX + "-unsubscribe-secret")
    address_hash_key: SecretStr = SecretStr(PLACEHOLDER_PREFIX + "-address-hash-key")
    templates_dir: Path = Field(default_factory=lambda: bundled("templates"))
    # The research firm that sends for its clients: named in every message's body and
    # footer, and the last field of its Feedback-ID; a template store given none shows the
    # same default.
    firm_name: str = Field(default=DEFAULT_FIRM_NAME, max_length=100)

    log_format: Literal["json", "console"] | None = None
    log_level: str = "INFO"

    slice_size: int = Field(default=500, ge=1, le=10_000)
    slices_in_flight: int = Field(default=50, ge=1, le=10_000)
    chunk_size: int = Field(default=250, ge=1, le=10_000)
    smtp_connections: int = Field(default=20, ge=1, le=200)
    send_rate: float = Field(default=0.0, ge=0)
    suppression_timeout_seconds: float = Field(default=5.0, gt=0)
    # Ignored since retries are measured in time (RETRY_HORIZON); the worker warns once.
    smtp_max_attempts: int | None = None
    retry_base_seconds: float = Field(default=30.0, gt=0)
    # A deferred message's delay doubles up to this, and it is retried until RETRY_HORIZON
    # after its first attempt (durations as users write them: 90s, 15m, 12h, 3d, 2w).
    retry_max_delay: timedelta = Field(default=timedelta(hours=1), gt=timedelta(0))
    retry_horizon: timedelta = Field(default=timedelta(hours=48), gt=timedelta(0))
    claim_lease_seconds: float = Field(default=300.0, gt=0)
    reconcile_interval_seconds: int = Field(default=60, ge=1)
    unknown_policy: Literal["hold", "resend"] = "hold"
    retention_days: int = Field(default=365, ge=1)

    # The feedback loop: bounces and complaints (see docs/bounces.md).
    bounce_domain: str | None = None
    inbound_max_bytes: int = Field(default=10_000_000, ge=1_000, le=100_000_000)
    # PEM certificate chain and private key: both set, `inbound` offers STARTTLS.
    inbound_tls_cert: Path | None = None
    inbound_tls_key: Path | None = None
    soft_bounce_limit: int = Field(default=3, ge=1)
    soft_bounce_window_days: int = Field(default=30, ge=1)
    pause_min_sent: int = Field(default=1000, ge=1)
    pause_bounce_rate: float = Field(default=0.05, gt=0, le=1)
    pause_complaint_rate: float = Field(default=0.001, gt=0, le=1)
    ses_topic_arns: str | None = None
    sns_cert_host_pattern: str = SNS_CERT_HOSTS
    sendgrid_webhook_public_key: str | None = None
    mailgun_webhook_signing_key: SecretStr | None = None
    postmark_webhook_user: str | None = None
    postmark_webhook_password: SecretStr | None = None

    # Standard Webhooks secret of POST /webhooks/completion (`whsec_<base64>`; unset: 404).
    completion_webhook_secret: SecretStr | None = None

    # At most K first survey invitations to one address in any rolling window (`2/30d`).
    contact_cap: str | None = None

    # The DNS resolver `client check` and launch ask about sending domains (`host:port`);
    # unset: the system's (/etc/resolv.conf).
    dns_resolver: str | None = None

    # The client API at /v1. Its database user launches and controls campaigns as
    # `launch` does (a login in the survey_worker role); unset: the web app's DATABASE_URL.
    api_database_url: str | None = None
    # The login of the worker's daily feed drops (a member of feed_dropper, which alone
    # reads a client's list for a drop); unset: the worker's DATABASE_URL.
    feed_database_url: str | None = None
    # A CSV upload larger than this is refused with 413.
    api_max_upload_bytes: int = Field(default=100_000_000, ge=1_000)
    # A JSON body (parsed whole, ~20x its size in memory) larger than this: 413.
    api_json_max_bytes: int = Field(default=5_000_000, ge=1_000)
    # Requests per minute per key; more get 429. 0: no limit.
    api_rate_limit: int = Field(default=600, ge=0)

    # Operating (see docs/operating.md): a worker's Prometheus port (unset: none served), the
    # bearer token /metrics of the web app asks for (unset: open), /ops's `user:hash,...`.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_token: SecretStr | None = None
    ops_users: SecretStr | None = None

    # The SMTP_RELAY_<NAME>_… variables found when the settings were read.
    _relay_variables: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(env_settings, EnvSettingsSource)
        assert isinstance(dotenv_settings, DotEnvSettingsSource)
        relay_variables = _RelayVariables(settings_cls, env_settings, dotenv_settings)
        return init_settings, env_settings, dotenv_settings, relay_variables, file_secret_settings

    @model_validator(mode="wrap")
    @classmethod
    def _relays(cls, data: Any, handler: ModelWrapValidatorHandler[Settings]) -> Settings:
        # Every command reads the relays' variables at start, so a bad one stops it there
        # with a ConfigError (one line), not when the first message goes out.
        found = data.pop(RELAY_VARIABLES, None) if isinstance(data, dict) else None
        settings = handler(data)
        if found is not None:
            settings._relay_variables = {str(k).upper(): str(v) for k, v in found.items()}
        relay_config.relays(settings)
        return settings

    @field_validator(
        "database_url", "redis_url", "api_database_url", "feed_database_url", mode="before"
    )
    @classmethod
    def _unset_when_blank(cls, value: object) -> object:
        # A blank URL means unset (embedded servers), as it did before URLs were checked.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("database_url", "api_database_url", "feed_database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        problem = None if value is None else postgres_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        problem = None if value is None else redis_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _redis_sentinels(cls, value: str | None) -> str | None:
        if value is not None:
            sentinel_addresses(value)
        return value

    @field_validator("redis_ca_file")
    @classmethod
    def _redis_ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not os.access(value, os.R_OK):
            raise ValueError("the file cannot be read")
        return value

    def queue_url(self) -> str | None:
        """REDIS_URL with what the other REDIS_ settings add to it (Sentinels, CA file) as
        query parameters, which `worker.queue` reads: the one string every process hands
        on. None when REDIS_URL is unset (the embedded Redis); ConfigError naming the
        setting missing from a Sentinel configuration."""
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            missing = "REDIS_SENTINEL_MASTER" if self.redis_sentinels else "REDIS_SENTINELS"
            raise ConfigError(f"{missing}: must be set with the other Sentinel setting")
        if self.redis_url is None:
            if self.redis_sentinels:
                raise ConfigError(
                    "REDIS_URL: must be set with REDIS_SENTINELS (its scheme, user, password "
                    "and database; the Sentinels replace its host)"
                )
            return None
        extra = {}
        if self.redis_ca_file is not None:
            extra["ca_file"] = str(self.redis_ca_file)
        if self.redis_sentinels:
            extra["sentinels"] = self.redis_sentinels
            extra["sentinel_master"] = self.redis_sentinel_master or ""
        if self.redis_sentinel_password is not None:
            extra["sentinel_password"] = self.redis_sentinel_password.get_secret_value()
        if not extra:
            return self.redis_url
        joiner = "&" if urlsplit(self.redis_url).query else "?"
        return self.redis_url + joiner + urlencode(extra, quote_via=quote)

    @field_validator("firm_name")
    @classmethod
    def _firm_name(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("must name the research firm, e.g. Survey Research")
        if UNSAFE_IN_HEADER.search(value):
            raise ValueError("holds a control character")
        return value

    @field_validator("retry_max_delay", "retry_horizon", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return durations.parse(value) if isinstance(value, str) else value

    @field_validator("bounce_domain")
    @classmethod
    def _bounce_domain(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower().rstrip(".")
        if not _DOMAIN.fullmatch(value):
            raise ValueError("must be a domain name such as bounces.example.com")
        return value

    @field_validator("contact_cap")
    @classmethod
    def _contact_cap(cls, value: str | None) -> str | None:
        if value is not None:
            parse_contact_cap(value)
        return value

    @field_validator("dns_resolver")
    @classmethod
    def _dns_resolver(cls, value: str | None) -> str | None:
        if value is not None:
            resolver_address(value)
        return value

    @field_validator("completion_webhook_secret")
    @classmethod
    def _completion_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            webhook_secret_key(value.get_secret_value())
        return value

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < 16:
            raise ValueError("must be at least 16 characters (or unset: /metrics is open)")
        return value

    @field_validator("privacy_contact", mode="before")
    @classmethod
    def _privacy_contact(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip() or None
        if value is not None and not (isinstance(value, str) and _is_contact(value)):
            raise ValueError(
                "must be a mailto: address (mailto:privacy@example.com) or an https:// URL"
            )
        return value

    @field_validator("ops_users")
    @classmethod
    def _ops_users(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            passwords.parse_users(value.get_secret_value())
        return value

    @field_validator("sns_cert_host_pattern")
    @classmethod
    def _host_pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"not a regular expression: {e}") from None
        return value

    @field_validator("smtp_host")
    @classmethod
    def _smtp_host(cls, value: str) -> str:
        value = value.strip()
        if not value or any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("must be a host name or address")
        return value

    def as_environment(self) -> dict[str, str]:
        """These settings as environment variables: a child process reading them (with no
        `.env` of its own in the way) gets exactly these settings."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, timedelta):
                value = f"{int(value.total_seconds())}s"
            env[name.upper()] = str(value)
        return {**env, **self._relay_variables}

    def relay_variables(self) -> dict[str, str]:
        """The SMTP_RELAY_<NAME>_… variables read with these settings, by name (upper case);
        `worker.relay_config` makes relays of them."""
        return dict(self._relay_variables)

    def ignored_settings(self) -> list[str]:
        """The settings that are set but no longer do anything (the worker warns of them)."""
        return ["SMTP_MAX_ATTEMPTS"] if self.smtp_max_attempts is not None else []

    def signing_keys(self) -> list[bytes]:
        """The unsubscribe signing keys, newest first: the first signs, all verify."""
        keys = [k.strip() for k in self.unsubscribe_secrets.get_secret_value().split(",")]
        return [k.encode() for k in keys if k]

    def hash_key(self) -> bytes:
        """The server key of the keyed address hash."""
        return self.address_hash_key.get_secret_value().encode()

    def contact_limit(self) -> tuple[int, timedelta] | None:
        """CONTACT_CAP as (K, window), or None when there is no cap."""
        return None if self.contact_cap is None else parse_contact_cap(self.contact_cap)

    def completion_webhook_key(self) -> bytes | None:
        """The HMAC key of COMPLETION_WEBHOOK_SECRET, or None when it is unset."""
        secret = self.completion_webhook_secret
        return None if secret is None else webhook_secret_key(secret.get_secret_value())

    def counts_days(self) -> int:
        """How long feedback and contact-cap rows are kept: RETENTION_DAYS, or longer when
        the soft-bounce window or CONTACT_CAP's window reads further back."""
        limit = self.contact_limit()
        cap_days = 0 if limit is None else -(-limit[1] // timedelta(days=1))
        return max(self.retention_days, self.soft_bounce_window_days, cap_days)

    def topic_arns(self) -> frozenset[str]:
        """The SNS topics whose SES notifications are accepted (SES_TOPIC_ARNS)."""
        return frozenset(a.strip() for a in (self.ses_topic_arns or "").split(",") if a.strip())

    def check_secrets(self) -> None:
        """Refuse placeholder or missing secrets outside demo and test."""
        keys = self.signing_keys()
        if not keys:
            raise ConfigError("UNSUBSCRIBE_SECRETS is empty")
        if self.app_env != "production":
            return
        secrets = [*keys, self.hash_key()]
        if any(k.startswith(PLACEHOLDER_PREFIX.encode()) or len(k) < 16 for k in secrets):
            raise ConfigError(
                "UNSUBSCRIBE_SECRETS and ADDRESS_HASH_KEY must be real secrets of at least "
                "16 characters in production (set APP_ENV=demo for a local trial)"
            )
        if not self.public_base_url.startswith("https://"):
            raise ConfigError("PUBLIC_BASE_URL must be an https:// URL in production")
