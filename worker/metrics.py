"""Prometheus metrics: what a worker or web process counts, and how it is exposed.

The send path counts in plain dicts and ints, once per chunk where it can (per message, a
dict increment and a histogram bucket: about 0.35 us); `prometheus_client` turns them into
metric families only when Prometheus scrapes (`collect`), in its server's thread. Labels
are bounded: states, reasons, reply classes, feedback kinds and sources, routes and
outcomes; never a campaign, a client or a recipient.

A worker serves its registry on METRICS_PORT (`serve`, prometheus_client's threaded
server); each worker process needs a port of its own, and Prometheus scrapes each as a
target (multiprocess mode would need a shared directory and cannot carry the collectors
here). `survey-worker inbound` serves its own the same way; the web app serves its own at
`/metrics` (worker/ops/).
"""

from __future__ import annotations

import re
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder, start_http_server
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from worker.records import Outcome
    from worker.settings import Settings

PREFIX = "survey_worker"
Labels = TypeVar("Labels", bound=tuple[str, ...])
# Claim to the server's 250: a chunk's messages queue for the SMTP connections, so the
# later ones of a chunk of 250 wait seconds, not milliseconds.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# From when a send_batch job was due until a worker started it.
WAIT_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)
CAMPAIGN_STATUSES = ("scheduled", "running", "paused", "cancelled", "completed", "failed")
# survey_worker_client_domain_ok's value for each verdict of a client's last domain check.
DOMAIN_OK = {"ok": 1.0, "warn": 0.5, "fail": 0.0}
# A reason label is an identifier the code chose; anything else (the text after
# "undeliverable: " or "template: ") is cut off or counted as "other".
_REASON = re.compile(r"[a-z][a-z0-9_]{0,39}")
# Which unsubscribe answers mean what (worker/web.py answers each outcome with one status).
UNSUBSCRIBE_OUTCOMES: dict[tuple[str, int], str] = {
    ("unsubscribe_page", 200): "page_shown",
    ("unsubscribe_page", 400): "invalid",
    ("unsubscribe", 200): "recorded",
    ("unsubscribe", 202): "queued",
    ("unsubscribe", 400): "invalid",
    ("unsubscribe", 503): "unavailable",
}


def reason_label(reason: str | None) -> str:
    """The bounded `reason` label of an outcome's reason (`none` when it has none)."""
    if not reason:
        return "none"
    head = reason.partition(":")[0].strip()
    return head if _REASON.fullmatch(head) else "other"


class Buckets:
    """A histogram's state: a count per bucket and the sum. `observe` is a bisect and two
    additions; `family` builds the cumulative Prometheus histogram at scrape time."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (`le` buckets: the first bound at or above the value)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        """The histogram as a metric family."""
        counts = list(self.counts)  # one copy: the event loop may add meanwhile
        cumulative, running = [], 0
        for bound, n in zip((*map(_number, self.bounds), "+Inf"), counts, strict=True):
            running += n
            cumulative.append((bound, float(running)))
        return HistogramMetricFamily(name, documentation, buckets=cumulative, sum_value=self.total)


def _number(bound: float) -> str:
    return repr(float(bound))


def _counter(
    name: str, documentation: str, labels: Sequence[str], values: dict[Labels, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=list(labels))
    for key, n in values.copy().items():
        family.add_metric(list(key), n)
    return family


@dataclass(eq=False)  # registered by identity
class WorkerMetrics:
    """What one worker process counts. The event loop writes; scrapes read copies."""

    invitations: dict[tuple[str, str], int] = field(default_factory=dict)
    replies: dict[tuple[str], int] = field(default_factory=dict)
    feedback: dict[tuple[str, str, str], int] = field(default_factory=dict)
    send_latency: Buckets = field(default_factory=lambda: Buckets(LATENCY_BUCKETS))
    queue_wait: Buckets = field(default_factory=lambda: Buckets(WAIT_BUCKETS))
    in_flight: int = 0
    heartbeat: float = 0.0
    # Per relay: 1 while it carries mail, 0 while it is in trouble.
    relay_up: dict[str, int] = field(default_factory=dict)
    # Messages deferred or given back, by relay and reason (a recipient's or the relay's).
    relay_deferrals: dict[tuple[str, str], int] = field(default_factory=dict)
    # arq's own job counters (complete, retried, failed), read at scrape time.
    jobs: Callable[[], tuple[int, int, int]] | None = None

    def decisions(self, outcomes: Iterable[Outcome], *, smtp: bool) -> None:
        """Count a chunk's decisions by state and reason; with `smtp`, their replies by
        class too (`2xx`, `4xx`, `5xx`, or `none`: no reply, the connection failed)."""
        tally: dict[tuple[str, str | None, int | None], int] = {}
        for o in outcomes:
            key = (o.state, o.reason, o.smtp_code)
            tally[key] = tally.get(key, 0) + 1
        for (state, reason, code), n in tally.items():
            label = (state, reason_label(reason))
            self.invitations[label] = self.invitations.get(label, 0) + n
            if not smtp or (code is None and state not in ("deferred", "unknown")):
                continue
            reply = ("none",) if code is None else (f"{code // 100}xx",)
            self.replies[reply] = self.replies.get(reply, 0) + n

    def deferred(self, relay: str, reason: str) -> None:
        """Count one message deferred (or given back) on `relay` for `reason`."""
        key = (relay, reason_label(reason))
        self.relay_deferrals[key] = self.relay_deferrals.get(key, 0) + 1

    def feedback_event(self, kind: str, source: str, result: str) -> None:
        """Count one bounce, complaint or delivery report by kind, source and what
        became of it (`recorded`, `duplicate`, `unmatched`)."""
        key = (kind, source, result)
        self.feedback[key] = self.feedback.get(key, 0) + 1

    def waited(self, due_ms: int) -> None:
        """A send_batch job due at `due_ms` (arq's score, ms since the epoch) started now."""
        self.queue_wait.observe(max(0.0, time.time() - due_ms / 1000))

    def beat(self) -> None:
        """The worker's poll loop went round (arq's heartbeat)."""
        self.heartbeat = time.time()

    def collect(self) -> Iterator[Metric]:
        """The metric families, built from the counts at this instant."""
        yield _counter(
            f"{PREFIX}_invitations",
            "Send decisions, by the state each led to and its reason.",
            ("state", "reason"),
            self.invitations,
        )
        yield _counter(
            f"{PREFIX}_smtp_replies",
            "SMTP replies to messages, by class (none: the connection failed).",
            ("class",),
            self.replies,
        )
        yield self.send_latency.family(
            f"{PREFIX}_send_latency_seconds", "From a chunk's claim to a message's 250."
        )
        yield self.queue_wait.family(
            f"{PREFIX}_queue_wait_seconds", "From when a send_batch job was due to its start."
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_messages_in_flight",
            "Messages marked sending by this process, not recorded yet.",
            value=self.in_flight,
        )
        yield _counter(
            f"{PREFIX}_feedback_events",
            "Bounce, complaint and delivery reports, by kind, source and result.",
            ("kind", "source", "result"),
            self.feedback,
        )
        up = GaugeMetricFamily(
            f"{PREFIX}_relay_up", "1 while a relay carries mail, 0 in trouble.", labels=["relay"]
        )
        for relay, value in self.relay_up.items():
            up.add_metric([relay], value)
        yield up
        yield _counter(
            f"{PREFIX}_relay_deferrals",
            "Messages deferred or given back, by relay and reason.",
            ("relay", "reason"),
            self.relay_deferrals,
        )
        jobs = CounterMetricFamily(
            f"{PREFIX}_jobs", "arq jobs this process ended, by result.", labels=["result"]
        )
        complete, retried, failed = self.jobs() if self.jobs else (0, 0, 0)
        for result, n in (("complete", complete), ("retried", retried), ("failed", failed)):
            jobs.add_metric([result], n)
        yield jobs
        yield GaugeMetricFamily(
            f"{PREFIX}_heartbeat_timestamp_seconds",
            "When this worker's poll loop last went round (Unix time).",
            value=self.heartbeat,
        )


@dataclass(frozen=True)
class _Thresholds:
    """The reputation guard's settings, so alert rules can compare rates with them."""

    bounce_rate: float
    complaint_rate: float
    min_sent: int

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            f"{PREFIX}_pause_bounce_rate", "PAUSE_BOUNCE_RATE.", value=self.bounce_rate
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_pause_complaint_rate", "PAUSE_COMPLAINT_RATE.", value=self.complaint_rate
        )
        yield GaugeMetricFamily(f"{PREFIX}_pause_min_sent", "PAUSE_MIN_SENT.", value=self.min_sent)


def worker_registry(counts: WorkerMetrics, settings: Settings) -> CollectorRegistry:
    """A worker process's registry: its counts, the guard's thresholds, the process."""
    worker = process_registry(counts)
    worker.register(
        _Thresholds(
            settings.pause_bounce_rate, settings.pause_complaint_rate, settings.pause_min_sent
        )
    )
    return worker


def serve(registry: CollectorRegistry, port: int) -> WSGIServer:
    """Serve `registry` on `port` of every interface, from a daemon thread."""
    server, _thread = start_http_server(port, registry=registry)
    return server


def stop(server: WSGIServer) -> None:
    """Stop serving and close the port (waits for the server's loop, at most half a second)."""
    server.shutdown()
    server.server_close()


@dataclass(eq=False)  # registered by identity
class WebMetrics:
    """What a web process counts, plus the ledger's gauges it reads at scrape time."""

    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    unsubscribe: dict[tuple[str, str], int] = field(default_factory=dict)
    campaigns: dict[str, int] | None = None  # None: the ledger could not be read
    due: int = 0
    # Each checked client's last sending-domain verdict (a label per client, an exception
    # to the rule above: the firm has dozens of clients, not thousands).
    domains: dict[str, str] = field(default_factory=dict)

    def request(self, route: str, status: int) -> None:
        """Count one answered request by its handler's name and status."""
        key = (route, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        outcome = UNSUBSCRIBE_OUTCOMES.get((route, status))
        if route in ("unsubscribe", "unsubscribe_page"):
            label = ("GET" if route == "unsubscribe_page" else "POST", outcome or "error")
            self.unsubscribe[label] = self.unsubscribe.get(label, 0) + 1

    def collect(self) -> Iterator[Metric]:
        """The metric families, built from the counts at this instant."""
        yield _counter(
            f"{PREFIX}_http_requests",
            "Requests to the web app, by handler and status.",
            ("route", "status"),
            self.requests,
        )
        yield _counter(
            f"{PREFIX}_unsubscribe_requests",
            "Unsubscribe requests, by method and outcome.",
            ("method", "outcome"),
            self.unsubscribe,
        )
        up = GaugeMetricFamily(
            f"{PREFIX}_ledger_up", "Whether this scrape could read the ledger (Postgres)."
        )
        up.add_metric([], 0 if self.campaigns is None else 1)
        yield up
        campaigns = GaugeMetricFamily(
            f"{PREFIX}_campaigns", "Campaigns in the ledger, by status.", labels=["status"]
        )
        due = GaugeMetricFamily(
            f"{PREFIX}_invitations_due",
            "Invitations of running campaigns due for sending now (pending, deferred and due).",
        )
        if self.campaigns is not None:
            for status in CAMPAIGN_STATUSES:
                campaigns.add_metric([status], self.campaigns.get(status, 0))
            due.add_metric([], self.due)
        yield campaigns
        yield due
        domains = GaugeMetricFamily(
            f"{PREFIX}_client_domain_ok",
            "The client's sending domain at its last check (daily, client check, launches): "
            "1 ok, 0.5 warn, 0 fail (DMARC enforced and no relay of its route aligned).",
            labels=["client"],
        )
        for client, verdict in sorted(self.domains.items()):
            domains.add_metric([client], DOMAIN_OK[verdict])
        yield domains


@dataclass(eq=False)  # registered by identity
class InboundMetrics:
    """What `survey-worker inbound` counts: messages by what became of them, and the
    recipients it refused by why."""

    messages: dict[tuple[str], int] = field(
        default_factory=lambda: {("queued",): 0, ("deferred",): 0}
    )
    refused: dict[tuple[str], int] = field(
        default_factory=lambda: {("not_bounce_domain",): 0, ("unknown_address",): 0}
    )

    def message(self, result: str) -> None:
        """A message `queued` for record_feedback, or `deferred` (451: Redis is away)."""
        self.messages[(result,)] = self.messages.get((result,), 0) + 1

    def refusal(self, reason: str) -> None:
        """A recipient refused: `not_bounce_domain` (550 5.7.1) or `unknown_address`."""
        self.refused[(reason,)] = self.refused.get((reason,), 0) + 1

    def collect(self) -> Iterator[Metric]:
        yield _counter(
            f"{PREFIX}_inbound_messages",
            "Bounce and complaint messages received, by what became of them.",
            ("result",),
            self.messages,
        )
        yield _counter(
            f"{PREFIX}_inbound_refused",
            "Recipients the inbound server refused, by why.",
            ("reason",),
            self.refused,
        )


def process_registry(counts: Collector) -> CollectorRegistry:
    """A process's registry: its counts (WebMetrics, InboundMetrics, ...) and the process's
    own collectors."""
    registry = CollectorRegistry()
    registry.register(counts)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The registry in the format the scraper accepts (text or OpenMetrics), and its type."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


class CountRequests:
    """ASGI middleware: count each answered request by handler name and status."""

    def __init__(self, app: ASGIApp, *, counts: WebMetrics) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            endpoint = scope.get("endpoint")
            self.counts.request(getattr(endpoint, "__name__", "-"), status)


def family_names(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry can expose (counters' `_total`, histograms'
    `_bucket`, `_sum`, `_count`), whether or not it has a sample yet."""
    names: set[str] = set()
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("_sum", "_count", ""),
    }
    for family in registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names
