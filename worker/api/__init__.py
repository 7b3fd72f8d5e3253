"""The client API under /v1: campaigns and the opt-out feed, authenticated by API key."""

from __future__ import annotations

from worker.api.app import ApiContext, create_app, running
from worker.api.config import ApiSettings

__all__ = ["ApiContext", "ApiSettings", "create_app", "running"]
