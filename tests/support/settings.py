"""The settings every test starts from: its database, Redis and SMTP server, test secrets,
the shipped templates, and small slices that make a campaign of a few hundred run through
several of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def make_settings(
    database_url: str, redis_url: str, smtp_host: str, smtp_port: int, **more: Any
) -> Settings:
    """Settings for a test against these servers (`more` overrides or adds fields)."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{
            "app_env": "test",
            "database_url": database_url,
            "redis_url": redis_url,
            "smtp_host": smtp_host,
            "smtp_port": smtp_port,
            "smtp_tls": "none",
            "smtp_timeout": 5,
            "public_base_url": "https://unsubscribe.test",
            "unsubscribe_secrets": "test-signing-key-1",
            "address_hash_key": "test-address-hash-key",
            "templates_dir": ROOT / "templates",
            "retry_base_seconds": 0.2,
            "slice_size": 10,
            "smtp_connections": 4,
            **more,
        },
    )
