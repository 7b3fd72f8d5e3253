"""A real authoritative DNS server for the tests, built on dnslib: it answers from the
zones it is given on a loopback UDP port (TXT and A records, NXDOMAIN for a name it does
not hold, SERVFAIL for the names it is told to fail), or, `silent`, never answers at all
(a resolver that times out)."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from dnslib import QTYPE, RCODE, RR, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

# A zone: name -> records, each ("TXT", text) or ("A", address).
Zone = Mapping[str, Sequence[tuple[str, str]]]


def _txt(text: str) -> TXT:
    # A TXT record's strings hold 255 bytes at most (RFC 1035 section 3.3.14).
    data = text.encode()
    return TXT([data[i : i + 255] for i in range(0, len(data), 255)] or [b""])


class ZoneResolver(BaseResolver):  # type: ignore[misc]
    """Answers from `zone` (names without the trailing dot, any case)."""

    def __init__(self, zone: Zone, servfail: frozenset[str]) -> None:
        self.zone = {name.lower().rstrip("."): list(records) for name, records in zone.items()}
        self.servfail = servfail
        self.queries: list[tuple[str, str]] = []

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).lower().rstrip(".")
        qtype = QTYPE[request.q.qtype]
        self.queries.append((name, qtype))
        if name in self.servfail:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if name not in self.zone:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for kind, value in self.zone[name]:
            if kind != qtype:
                continue
            rdata = _txt(value) if kind == "TXT" else A(value)
            reply.add_answer(RR(request.q.qname, QTYPE.reverse[kind], rdata=rdata, ttl=60))
        return reply


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def serving(zone: Zone, *, servfail: Sequence[str] = ()) -> Iterator[str]:
    """Serve `zone` on 127.0.0.1 (UDP); yield the server as DNS_RESOLVER reads it."""
    resolver = ZoneResolver(zone, frozenset(servfail))
    server = DNSServer(
        resolver,
        address="127.0.0.1",
        port=_free_udp_port(),
        logger=DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False),
    )
    server.start_thread()
    try:
        yield f"127.0.0.1:{server.server.server_address[1]}"
    finally:
        server.stop()
        server.server.server_close()


@contextmanager
def silent() -> Iterator[str]:
    """A UDP port that receives queries and never answers them: lookups time out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"
