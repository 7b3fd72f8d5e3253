"""structlog configuration: done once, at process start.

JSON lines (orjson) when stdout is not a terminal, readable colours when it is. Log lines
identify people only by `recipient`, a short keyed hash; see `addresses.recipient_id`.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import orjson
import structlog


def configure(*, fmt: Literal["json", "console"] | None, level: str) -> None:
    """Configure structlog for the whole process."""
    if fmt is None:
        fmt = "console" if sys.stdout.isatty() else "json"
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if fmt == "json":
        processors.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory: structlog.typing.WrappedLogger = structlog.BytesLoggerFactory()
    else:
        renderer = structlog.dev.ConsoleRenderer()
        factory = structlog.PrintLoggerFactory()
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # arq and asyncpg log through the standard library: keep their lines, at WARNING.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
