"""The client API under /v1: campaigns and the opt-out feed, authenticated by API key."""

from __future__ import annotations

from worker.web.api.app import ApiContext, create_app, running

__all__ = ["ApiContext", "create_app", "running"]
