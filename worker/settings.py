"""Configuration, read from the environment and `.env` (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.errors import ConfigError
from worker.resources import bundled

PLACEHOLDER_PREFIX = "change-me"


class Settings(BaseSettings):
    """Every knob of the worker, the web app and the CLI; see `.env.example`."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    app_env: Literal["production", "demo", "test"] = "production"
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path(".data")

    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_tls: Literal["none", "starttls", "tls"] = "starttls"
    smtp_timeout: float = Field(default=30.0, gt=0)

    public_base_url: str = "https://unsubscribe.example.com"
    unsubscribe_secrets: SecretStr = SecretStr(PLACEHOLDER_PREFIX + "-unsubscribe-secret")
    address_hash_key: SecretStr = SecretStr(PLACEHOLDER_PREFIX + "-address-hash-key")
    templates_dir: Path = Field(default_factory=lambda: bundled("templates"))

    log_format: Literal["json", "console"] | None = None
    log_level: str = "INFO"

    slice_size: int = Field(default=500, ge=1, le=10_000)
    slices_in_flight: int = Field(default=50, ge=1, le=10_000)
    chunk_size: int = Field(default=250, ge=1, le=10_000)
    smtp_connections: int = Field(default=20, ge=1, le=200)
    send_rate: float = Field(default=0.0, ge=0)
    suppression_timeout_seconds: float = Field(default=5.0, gt=0)
    smtp_max_attempts: int = Field(default=5, ge=1)
    retry_base_seconds: float = Field(default=30.0, gt=0)
    claim_lease_seconds: float = Field(default=300.0, gt=0)
    reconcile_interval_seconds: int = Field(default=60, ge=1)
    unknown_policy: Literal["hold", "resend"] = "hold"
    retention_days: int = Field(default=365, ge=1)

    def as_environment(self) -> dict[str, str]:
        """These settings as environment variables: a child process reading them (with no
        `.env` of its own in the way) gets exactly these settings."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[name.upper()] = str(value)
        return env

    def signing_keys(self) -> list[bytes]:
        """The unsubscribe signing keys, newest first: the first signs, all verify."""
        keys = [k.strip() for k in self.unsubscribe_secrets.get_secret_value().split(",")]
        return [k.encode() for k in keys if k]

    def hash_key(self) -> bytes:
        """The server key of the keyed address hash."""
        return self.address_hash_key.get_secret_value().encode()

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
