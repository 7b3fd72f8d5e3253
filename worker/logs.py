"""structlog configuration: done once, at process start.

JSON lines (orjson) when the log stream is not a terminal, readable colours when it is.
The worker and the web app log on stdout; the other commands on stderr, since their stdout
is their answer (text, JSON or CSV). Log lines identify people only by `recipient`, a short
keyed hash; see `addresses.recipient_id`.

The standard library's loggers (arq's, asyncpg's, asyncio's, warnings) go through the
same renderer (structlog's `ProcessorFormatter`), and so does an exception nothing caught:
in JSON, every line is one JSON object, a traceback included (`exception`, with the
error's `error_type` and `error`). Whatever text comes from outside our code (a library's
message, an exception's) has anything shaped like an address or an unsubscribe token
replaced before it is written.
"""

from __future__ import annotations

import logging
import re
import sys
from types import TracebackType
from typing import Any, Literal, TextIO

import orjson
import structlog
from structlog.typing import EventDict, ExcInfo, WrappedLogger

# What stands in for an address or a token found in a line (RFC 5322 addr-spec, loosely:
# it also catches the password of a `user:password@host` URL).
_ADDRESS = re.compile(r"[^\s<>()\[\]{}@,;:\"'/\\]+@[\w-]+(?:\.[\w-]+)+")
# An unsubscribe token (worker/tokens.py): 88 characters of URL-safe base64, or more.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{88,}")


def redact(text: str) -> str:
    """`text` with anything shaped like an e-mail address or a token replaced."""
    if "@" in text:
        text = _ADDRESS.sub("<address>", text)
    return _TOKEN.sub("<token>", text) if len(text) >= 88 else text


def _redacted(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    """Redact every text value of a line (our own fields hold none: this is for the
    messages and exceptions of libraries)."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
    return event


def _error_fields(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    """Name the exception of a line carrying one: `error_type` and `error` (its message),
    beside the traceback that `format_exc_info` renders as `exception`."""
    exc_info = event.get("exc_info")
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, BaseException):
        error: BaseException | None = exc_info
    elif isinstance(exc_info, tuple):
        error = exc_info[1]
    else:
        error = None
    if error is not None:
        event.setdefault("error_type", type(error).__name__)
        event.setdefault("error", str(error))
    return event


def configure(
    *, fmt: Literal["json", "console"] | None, level: str, stream: TextIO | None = None
) -> None:
    """Configure structlog, and the standard library's logging, for the whole process,
    logging to `stream` (default: stdout)."""
    stream = stream or sys.stdout
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if fmt == "json":
        ending: list[structlog.typing.Processor] = [
            _error_fields,
            structlog.processors.format_exc_info,
            _redacted,
        ]
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory: structlog.typing.WrappedLogger = structlog.BytesLoggerFactory(stream.buffer)
    else:
        ending = []
        renderer = structlog.dev.ConsoleRenderer()
        factory = structlog.PrintLoggerFactory(stream)
    structlog.configure(
        processors=[*shared, *ending, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    _route_standard_logging(stream, shared, ending, renderer, json=fmt == "json")


def _route_standard_logging(
    stream: TextIO,
    shared: list[structlog.typing.Processor],
    ending: list[structlog.typing.Processor],
    renderer: structlog.typing.Processor,
    *,
    json: bool,
) -> None:
    """arq, asyncpg and the other libraries log through the standard library: keep their
    lines, at WARNING, rendered as ours on the same stream; warnings and uncaught
    exceptions too."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *ending,
            # The same JSON as ours, as the str logging wants.
            structlog.processors.JSONRenderer(serializer=_json_text) if json else renderer,
        ],
    )
    handler = _OurHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    if json:
        sys.excepthook = _log_uncaught


def _json_text(value: Any, **options: Any) -> str:
    return orjson.dumps(value, **options).decode()


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure` installs (and replaces when called again)."""


_uncaught = logging.getLogger("worker.uncaught")


def _log_uncaught(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    """sys.excepthook: an exception nothing caught, as one line like every other."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, traceback)
        return
    exc_info: ExcInfo = (kind, error, traceback)
    _uncaught.critical("process.uncaught_exception", exc_info=exc_info)
