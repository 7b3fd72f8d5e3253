"""The `survey-worker` command line, one module per topic: `campaigns`, `clients`,
`privacy`, `services`, `ops` and `relays`; `base` holds the root group, the environment and what
the commands share; `watch` draws `status --watch`. Importing a topic registers its
commands on `main`; the commands parse, call the engine and print (no SQL here)."""

from worker.cli import campaigns, clients, ops, privacy, relays, services  # noqa: F401
from worker.cli.base import main

__all__ = ["main"]
