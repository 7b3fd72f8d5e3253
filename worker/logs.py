"""structlog configuration: done once, at process start.

JSON lines (orjson) when the log stream is not a terminal, readable colours when it is.
The worker and the web app log on stdout; the other commands on stderr, since their stdout
is their answer (text, JSON or CSV). Log lines identify people only by `recipient`, a short
keyed hash; see `addresses.recipient_id`.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import orjson
import structlog


def configure(
    *, fmt: Literal["json", "console"] | None, level: str, stream: TextIO | None = None
) -> None:
    """Configure structlog for the whole process, logging to `stream` (default: stdout)."""
    stream = stream or sys.stdout
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if fmt == "json":
        processors.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory: structlog.typing.WrappedLogger = structlog.BytesLoggerFactory(stream.buffer)
    else:
        renderer = structlog.dev.ConsoleRenderer()
        factory = structlog.PrintLoggerFactory(stream)
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
