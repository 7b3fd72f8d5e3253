"""The worker settings a bench run uses, and how they reach the worker processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from worker.settings import Settings


class BenchSettings(Settings):
    """`Settings` built from the defaults and the bench's own values only.

    Neither the environment nor `.env` is read: a developer's `SEND_RATE` or production
    `DATABASE_URL` must not change what the bench measures.
    """

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def bench_settings(
    *,
    database_url: str,
    redis_url: str,
    smtp_port: int,
    data_dir: Path,
    slice_size: int | None,
    smtp_connections: int | None,
    features: bool = False,
    relays: int = 1,
) -> Settings:
    """Settings for the workers of one run: local sink without TLS, JSON decision logs.

    The throughput knobs keep their defaults unless given. `features` sets BOUNCE_DOMAIN
    (VERP envelope senders) and CONTACT_CAP (counted at send time). More than one of
    `relays` names that many relays (SMTP_RELAYS) to the same sink, sharing the mail by
    equal weights and SMTP_CONNECTIONS between them, so only the routing differs.
    """
    values: dict[str, Any] = {
        "app_env": "test",
        "database_url": database_url,
        "redis_url": redis_url,
        "data_dir": data_dir,
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp_port,
        "smtp_tls": "none",
        "log_format": "json",
        "log_level": "INFO",
    }
    if features:
        values["bounce_domain"] = "bounces.bench.example.com"
        values["contact_cap"] = "3/30d"
    if slice_size is not None:
        values["slice_size"] = slice_size
    if smtp_connections is not None:
        values["smtp_connections"] = smtp_connections
    if relays > 1:
        names = [f"r{i}" for i in range(1, relays + 1)]
        share = max(
            1, (smtp_connections or Settings.model_fields["smtp_connections"].default) // relays
        )
        values["smtp_relays"] = ",".join(names)
        values["smtp_relay_variables"] = {
            variable: value
            for name in names
            for variable, value in (
                (f"SMTP_RELAY_{name.upper()}_URL", f"smtp://127.0.0.1:{smtp_port}"),
                (f"SMTP_RELAY_{name.upper()}_CONNECTIONS", str(share)),
            )
        }
    return BenchSettings(**values)


def worker_env(settings: Settings, path: str) -> dict[str, str]:
    """The complete environment that gives a worker process exactly these settings."""
    return {"PATH": path, "HOME": str(Path.home()), **settings.as_environment()}
