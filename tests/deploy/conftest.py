"""Fixtures of the deployment tier: real Debian servers and the installed wheel."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.deploy.servers import (
    Installation,
    Postgres,
    debian_postgres,
    debian_redis,
    installed_wheel,
)


@pytest.fixture(scope="session")
def installation() -> Iterator[Installation]:
    """The wheel built from this checkout, installed into a fresh virtualenv."""
    with installed_wheel() as installed:
        yield installed


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    """A fresh Debian Postgres cluster for one test (roles are cluster-wide)."""
    with debian_postgres() as server:
        yield server


@pytest.fixture
def redis_port() -> Iterator[int]:
    """A Debian redis-server for one test."""
    with debian_redis() as port:
        yield port
