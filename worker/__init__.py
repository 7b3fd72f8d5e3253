"""survey-worker: send survey invitations by email, never to an opted-out address."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
