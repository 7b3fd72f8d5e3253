"""A local SMTP sink for the demo: accepts every message and saves it as an .eml file."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from worker.dev.embedded import free_port


class SavingHandler:
    """aiosmtpd handler that writes each accepted message to `folder/NNNN.eml`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._lock:
            number = next(self._numbers)
        content = envelope.original_content or b""
        (self.folder / f"{number:04d}.eml").write_bytes(content)
        return "250 2.0.0 saved"


@contextlib.contextmanager
def running(folder: Path) -> Iterator[int]:
    """Run the sink on 127.0.0.1 in a background thread; yield its port."""
    port = free_port()
    controller = Controller(SavingHandler(folder), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()
