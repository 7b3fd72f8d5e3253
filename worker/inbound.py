"""`survey-worker inbound`: the SMTP server that receives bounces and complaints.

It is the mail exchanger of BOUNCE_DOMAIN and of nothing else: RCPT to a genuine VERP
address (`b-TOKEN@BOUNCE_DOMAIN`, see worker/verp.py) is taken, one with a bad token is
refused with 550 5.1.1, any other domain with 550 5.7.1 (never a relay). A message over
INBOUND_MAX_BYTES is refused with 552. The message is answered 250 only once a
`record_feedback` job carrying it is in Redis, and 451 (try again later) otherwise, so the
sending MTA keeps it while Redis is away; Postgres is not needed to receive. With
METRICS_PORT set, it serves its counts to Prometheus there (worker/metrics.py). With
INBOUND_TLS_CERT and INBOUND_TLS_KEY set, it offers STARTTLS (RFC 3207); it never requires
it, since an MTA that cannot start TLS still has a bounce to deliver.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import ssl
from collections.abc import Sequence
from pathlib import Path

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from worker import metrics, queue, verp
from worker.errors import ConfigError

log = structlog.get_logger("worker.inbound")

# How long one message may wait for Redis before the sender is told to try again.
QUEUE_TIMEOUT = 5.0
# An idle or stuck client is disconnected after this many seconds (RFC 5321 §4.5.3.2
# asks at least 5 minutes of a client; a server may be stricter).
IDLE_TIMEOUT = 120.0


class FeedbackHandler:
    """aiosmtpd's handler: which recipients are taken, and what a taken message becomes."""

    def __init__(
        self,
        *,
        keys: Sequence[bytes],
        domain: str,
        queue: queue.LazyQueue,
        counts: metrics.InboundMetrics,
    ) -> None:
        self._keys = list(keys)
        self._domain = domain
        self._queue = queue
        self._counts = counts

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Take a genuine VERP address at BOUNCE_DOMAIN; refuse every other recipient."""
        domain = address.rpartition("@")[2].lower().rstrip(".")
        if domain != self._domain:
            return self._refuse("not_bounce_domain", "550 5.7.1 Relaying denied")
        if verp.invitation_of(self._keys, address, self._domain) is None:
            return self._refuse("unknown_address", "550 5.1.1 No such mailbox")
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Queue one `record_feedback` job per recipient, then answer 250; 451 if Redis
        did not take them (the jobs already queued are harmless: feedback counts once)."""
        content = envelope.original_content or b""
        encoded = base64.b64encode(content).decode()
        try:
            async with asyncio.timeout(QUEUE_TIMEOUT):
                redis = await self._queue.get()
                for address in envelope.rcpt_tos:
                    # The same message delivered twice while the first is queued is one job.
                    # Job ids are logged: a hash, never the address (its token).
                    digest = hashlib.sha256(address.lower().encode() + b"\0" + content)
                    job_id = f"feedback:{digest.hexdigest()}"
                    await queue.enqueue_feedback(
                        redis, {"verp": address, "message": encoded}, job_id=job_id
                    )
        except (TimeoutError, *queue.ERRORS) as e:
            log.warning("inbound.deferred", reason=type(e).__name__, size=len(content))
            self._counts.message("deferred")
            return "451 4.3.0 Cannot take the message now, try again later"
        log.info("inbound.queued", size=len(content), recipients=len(envelope.rcpt_tos))
        self._counts.message("queued")
        return "250 2.0.0 OK: queued"

    def _refuse(self, reason: str, reply: str) -> str:
        log.info("inbound.refused", reason=reason)
        self._counts.refusal(reason)
        return reply


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """The server TLS context that STARTTLS offers, from INBOUND_TLS_CERT and
    INBOUND_TLS_KEY (PEM files), or None when neither is set. ConfigError, naming the
    setting, when only one is set or a file cannot be read or used."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("INBOUND_TLS_CERT and INBOUND_TLS_KEY go together: set both or neither")
    for name, path in (("INBOUND_TLS_CERT", cert), ("INBOUND_TLS_KEY", key)):
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ConfigError(f"{name}: {path} is not a file that can be read")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise ConfigError(
            "INBOUND_TLS_CERT / INBOUND_TLS_KEY: not a PEM certificate and its private key"
            f" ({e.reason or e})"
        ) from None
    return context


async def serve(
    *,
    keys: Sequence[bytes],
    domain: str,
    redis_url: str,
    max_bytes: int,
    host: str,
    port: int,
    metrics_port: int | None,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Receive mail for `domain` on `host:port` until SIGINT or SIGTERM, offering STARTTLS
    with `tls` if given; serve the counts on `metrics_port` if given."""
    lazy = queue.LazyQueue(redis_url)
    counts = metrics.InboundMetrics()
    handler = FeedbackHandler(keys=keys, domain=domain, queue=lazy, counts=counts)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname=domain,
            ident="survey-worker inbound",
            data_size_limit=max_bytes,
            enable_SMTPUTF8=True,
            timeout=IDLE_TIMEOUT,
            tls_context=tls,
        ),
        host=host,
        port=port,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    exporter = None
    if metrics_port is not None:
        exporter = metrics.serve(metrics.process_registry(counts), metrics_port)
    bound = server.sockets[0].getsockname()
    log.info(
        "inbound.listening", host=bound[0], port=bound[1], domain=domain, starttls=tls is not None
    )
    try:
        await stop.wait()
    finally:
        if exporter is not None:
            metrics.stop(exporter)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        server.close()
        await server.wait_closed()
        await lazy.close()
        log.info("inbound.stopped")
