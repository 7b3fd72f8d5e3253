"""The built-in SMTP sink, for machines without Postfix's `smtp-sink`.

`python -m bench.pysink PORT DIR` accepts every message on 127.0.0.1:PORT and writes each
to a file in DIR in `smtp-sink -d`'s format (one `X-Rcpt-Args: <address>` line per
recipient, then the message), so the bench verifies both sinks the same way. It runs
aiosmtpd on uvloop in a process of its own, and it is still much slower than smtp-sink:
with it, the sink is the bottleneck.
"""

from __future__ import annotations

import argparse
import itertools
import signal
from pathlib import Path

import uvloop
from aiosmtpd.smtp import SMTP, Envelope, Session


class DumpingHandler:
    """aiosmtpd handler that writes every accepted transaction to its own file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._numbers = itertools.count(1)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        lines = b"".join(b"X-Rcpt-Args: <%s>\n" % r.encode() for r in envelope.rcpt_tos)
        path = self.folder / f"{next(self._numbers):09d}"
        path.write_bytes(lines + (envelope.original_content or b""))
        return "250 2.0.0 accepted"


def main() -> None:
    """Serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    handler = DumpingHandler(args.folder)
    loop = uvloop.new_event_loop()
    server = loop.run_until_complete(
        loop.create_server(
            lambda: SMTP(handler, hostname="bench-sink", loop=loop), "127.0.0.1", args.port
        )
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, loop.stop)
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()
