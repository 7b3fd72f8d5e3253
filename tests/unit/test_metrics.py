"""The worker's and web app's metrics as Prometheus reads them: bounded labels, histogram
buckets, and every family in the registries the processes build."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from worker import metrics
from worker.records import Outcome
from worker.settings import Settings


def _samples(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.exposition(registry, "")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def _settings() -> Settings:
    return Settings(_env_file=None, pause_complaint_rate=0.002)  # type: ignore[call-arg]


def test_reason_labels_are_identifiers_whatever_the_reason_says() -> None:
    assert metrics.reason_label(None) == "none"
    assert metrics.reason_label("client_opt_out") == "client_opt_out"
    assert metrics.reason_label("undeliverable: SMTPUTF8 needed for ann@example.com") == (
        "undeliverable"
    )
    assert metrics.reason_label("Weird Reason") == "other"
    assert metrics.reason_label("x" * 80) == "other"


@given(st.text(max_size=200))
def test_any_reason_gives_a_short_identifier(reason: str) -> None:
    label = metrics.reason_label(reason)
    assert len(label) <= 40 and label.replace("_", "").isalnum() and label.isascii()


def test_a_chunk_is_counted_by_state_reason_and_reply_class() -> None:
    counts = metrics.WorkerMetrics()
    early = [Outcome(1, "suppressed", reason="client_opt_out")] * 3
    done = [
        *[Outcome(i, "sent", smtp_code=250) for i in range(10, 15)],
        Outcome(20, "deferred", reason="smtp_transient", smtp_code=451),
        Outcome(21, "deferred", reason="smtp_transient"),
        Outcome(22, "failed", reason="hard_bounce", smtp_code=550),
        Outcome(23, "failed", reason="undeliverable: no SMTPUTF8"),
        Outcome(24, "unknown", reason="no_reply_after_data"),
    ]
    counts.decisions(early, smtp=False)
    counts.decisions(done, smtp=True)
    samples = _samples(metrics.worker_registry(counts, _settings()))
    invitations = {
        dict(labels)["state"] + "/" + dict(labels)["reason"]: v
        for (name, labels), v in samples.items()
        if name == "survey_worker_invitations_total"
    }
    assert invitations == {
        "suppressed/client_opt_out": 3,
        "sent/none": 5,
        "deferred/smtp_transient": 2,
        "failed/hard_bounce": 1,
        "failed/undeliverable": 1,
        "unknown/no_reply_after_data": 1,
    }
    replies = {
        dict(labels)["class"]: v
        for (name, labels), v in samples.items()
        if name == "survey_worker_smtp_replies_total"
    }
    # A failure before any reply (undeliverable) is no reply class; a deferral without
    # a code is a connection that failed, and an unknown is a reply that never came.
    assert replies == {"2xx": 5, "4xx": 1, "5xx": 1, "none": 2}
    assert samples[("survey_worker_pause_complaint_rate", ())] == 0.002


def test_histograms_are_cumulative_with_sum_and_count() -> None:
    counts = metrics.WorkerMetrics()
    for value in (0.005, 0.01, 0.3, 7.0, 1000.0):
        counts.send_latency.observe(value)
    samples = _samples(metrics.worker_registry(counts, _settings()))

    def bucket(le: str) -> float:
        return samples[("survey_worker_send_latency_seconds_bucket", (("le", le),))]

    assert bucket("0.01") == 2  # `le`: 0.01 itself is in the 0.01 bucket
    assert bucket("0.25") == 2
    assert bucket("0.5") == 3
    assert bucket("10.0") == 4
    assert bucket("+Inf") == 5
    assert samples[("survey_worker_send_latency_seconds_count", ())] == 5
    assert abs(samples[("survey_worker_send_latency_seconds_sum", ())] - 1007.315) < 1e-9


def test_feedback_jobs_heartbeat_and_in_flight() -> None:
    counts = metrics.WorkerMetrics()
    counts.feedback_event("complaint", "verp", "recorded")
    counts.feedback_event("complaint", "verp", "recorded")
    counts.feedback_event("hard", "ses", "duplicate")
    counts.jobs = lambda: (7, 2, 1)
    counts.in_flight = 12
    counts.beat()
    counts.waited(0)
    samples = _samples(metrics.worker_registry(counts, _settings()))
    key = (("kind", "complaint"), ("result", "recorded"), ("source", "verp"))
    assert samples[("survey_worker_feedback_events_total", key)] == 2
    assert samples[("survey_worker_jobs_total", (("result", "failed"),))] == 1
    assert samples[("survey_worker_jobs_total", (("result", "complete"),))] == 7
    assert samples[("survey_worker_messages_in_flight", ())] == 12
    assert samples[("survey_worker_heartbeat_timestamp_seconds", ())] > 1.7e9
    assert samples[("survey_worker_queue_wait_seconds_bucket", (("le", "+Inf"),))] == 1


def test_web_counts_unsubscribe_outcomes_and_reads_campaigns_when_it_can() -> None:
    counts = metrics.WebMetrics()
    for route, status in [
        ("unsubscribe_page", 200),
        ("unsubscribe", 200),
        ("unsubscribe", 202),
        ("unsubscribe", 400),
        ("unsubscribe", 500),
        ("healthz", 200),
    ]:
        counts.request(route, status)
    registry = metrics.process_registry(counts)
    samples = _samples(registry)
    outcomes = {
        dict(labels)["method"] + " " + dict(labels)["outcome"]: v
        for (name, labels), v in samples.items()
        if name == "survey_worker_unsubscribe_requests_total"
    }
    assert outcomes == {
        "GET page_shown": 1,
        "POST recorded": 1,
        "POST queued": 1,
        "POST invalid": 1,
        "POST error": 1,
    }
    assert samples[("survey_worker_ledger_up", ())] == 0
    assert not any(name == "survey_worker_campaigns" for name, _ in samples)
    counts.campaigns = {"running": 2}
    samples = _samples(registry)
    assert samples[("survey_worker_ledger_up", ())] == 1
    assert samples[("survey_worker_campaigns", (("status", "running"),))] == 2
    assert samples[("survey_worker_campaigns", (("status", "failed"),))] == 0


def test_family_names_list_series_before_any_sample() -> None:
    names = metrics.family_names(metrics.worker_registry(metrics.WorkerMetrics(), _settings()))
    assert {
        "survey_worker_invitations_total",
        "survey_worker_smtp_replies_total",
        "survey_worker_send_latency_seconds_bucket",
        "survey_worker_queue_wait_seconds_count",
        "survey_worker_messages_in_flight",
        "survey_worker_feedback_events_total",
        "survey_worker_jobs_total",
        "survey_worker_heartbeat_timestamp_seconds",
        "survey_worker_pause_complaint_rate",
        "process_resident_memory_bytes",
    } <= names
    web = metrics.family_names(metrics.process_registry(metrics.WebMetrics()))
    assert {"survey_worker_campaigns", "survey_worker_unsubscribe_requests_total"} <= web


def test_metrics_token_and_port_are_checked() -> None:
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(_env_file=None, metrics_token="short")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Settings(_env_file=None, metrics_port=70000)  # type: ignore[call-arg]
    assert Settings(_env_file=None, metrics_port="9101").metrics_port == 9101  # type: ignore[call-arg]
