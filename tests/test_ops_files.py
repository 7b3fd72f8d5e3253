"""The ready-made monitoring files in ops/: the Grafana dashboard, the Prometheus alert
rules and the example scrape configuration parse, have the shapes Grafana and Prometheus
load, and name only metrics that the worker, the inbound server and the web app export
(`promtool` is not available here, so the rules' shape is checked against Prometheus's
documented format)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker import metrics
from worker.settings import Settings

OPS = Path(__file__).resolve().parents[1] / "ops"
# PromQL words that are not metric names: functions, aggregations, keywords.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "rate", "increase", "irate", "absent", "vector",
    "time", "histogram_quantile", "max_over_time", "min_over_time", "and", "or", "unless",
    "bool", "offset", "scalar", "clamp_min", "clamp_max",
}  # fmt: skip
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")
REQUIRED_ALERTS = {
    "SurveyWorkerSendingStalled",
    "SurveyWorkerDeferralRateHigh",
    "SurveyWorkerComplaintRateNearPause",
    "SurveyWorkerNoHeartbeat",
    "SurveyWorkerInboundDeferring",
    "RelayDown",
}


def exported() -> set[str]:
    """Every series name the worker's, the inbound server's and the web app's registries
    can expose."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    registries = (
        metrics.worker_registry(metrics.WorkerMetrics(), settings),
        metrics.process_registry(metrics.InboundMetrics()),
        metrics.process_registry(metrics.WebMetrics()),
    )
    return set().union(*(metrics.family_names(r) for r in registries))


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    assert expr.count("(") == expr.count(")"), expr
    assert expr.count("{") == expr.count("}"), expr
    text = re.sub(r'"[^"]*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\$\w+", "", text)  # Grafana's variables
    text = re.sub(r"(?<![\w.])\d+(\.\d+)?(e\d+)?", "", text)  # numbers
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return words - PROMQL_WORDS


def test_the_name_extraction_finds_metrics_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{x="y z"}[$__rate_interval])))'
        " / on () max(b) > 0.8 * 1e9 and absent(c_total)"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c_total"}


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((OPS / "alerts.yml").read_text(encoding="utf-8"))
    assert isinstance(document, dict) and set(document) == {"groups"}
    groups = document["groups"]
    assert isinstance(groups, list) and groups
    names = [g["name"] for g in groups]
    assert len(set(names)) == len(names)
    found = []
    for group in groups:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        assert isinstance(group["rules"], list) and group["rules"]
        found += group["rules"]
    return found


def test_alert_rules_have_the_prometheus_rule_shape() -> None:
    alerts = rules()
    for rule in alerts:
        assert set(rule) <= RULE_KEYS, rule
        assert ("alert" in rule) != ("record" in rule)
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        for key in ("for", "keep_firing_for"):
            if key in rule:
                assert DURATION.fullmatch(rule[key]), rule[key]
        for key in ("labels", "annotations"):
            values = rule.get(key, {})
            assert isinstance(values, dict)
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in values.items())
            for text in values.values():
                assert text.count("{{") == text.count("}}"), text
        assert rule.get("labels", {}).get("severity") in ("page", "warn")
        assert {"summary", "description"} <= set(rule.get("annotations", {}))
    names = [r["alert"] for r in alerts]
    assert len(set(names)) == len(names)
    assert set(names) >= REQUIRED_ALERTS


def test_alert_rules_use_only_exported_metrics() -> None:
    known = exported()
    for rule in rules():
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= known, (rule["alert"], used - known)


def test_the_complaint_alert_compares_with_the_pause_threshold_exported() -> None:
    (rule,) = [r for r in rules() if r["alert"] == "SurveyWorkerComplaintRateNearPause"]
    assert "survey_worker_pause_complaint_rate" in metric_names(rule["expr"])
    assert "survey_worker_pause_min_sent" in metric_names(rule["expr"])


def test_relay_down_fires_per_relay_once_every_worker_says_it_is_in_trouble() -> None:
    (rule,) = [r for r in rules() if r["alert"] == "RelayDown"]
    # max across workers: a relay is down only when no worker that reports it sends
    # through it; `by (relay)`: one alert per relay, named in its annotations.
    assert " ".join(rule["expr"].split()) == "max by (relay) (survey_worker_relay_up) == 0"
    assert rule["for"] == "15m"
    assert rule["labels"]["severity"] == "page"
    for text in rule["annotations"].values():
        assert "{{ $labels.relay }}" in text
    assert "check-relay" in rule["annotations"]["description"]


def dashboard() -> dict[str, Any]:
    document = json.loads((OPS / "dashboard.json").read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def test_the_dashboard_has_grafanas_shape() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids) and len(ids) >= 10
    for panel in board["panels"]:
        assert panel["type"] in ("stat", "timeseries", "gauge", "bargauge", "table")
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y"))
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(set(refs)) == len(refs)


@pytest.mark.parametrize("index", range(len(dashboard()["panels"])))
def test_every_dashboard_query_uses_only_exported_metrics(index: int) -> None:
    panel = dashboard()["panels"][index]
    known = exported()
    for target in panel["targets"]:
        used = metric_names(target["expr"])
        assert used, (panel["title"], target["expr"])
        assert used <= known, (panel["title"], used - known)


def test_the_dashboard_shows_every_metric_the_issue_names() -> None:
    used = set().union(
        *(metric_names(t["expr"]) for p in dashboard()["panels"] for t in p["targets"])
    )
    assert {
        "survey_worker_invitations_total",
        "survey_worker_smtp_replies_total",
        "survey_worker_send_latency_seconds_bucket",
        "survey_worker_queue_wait_seconds_bucket",
        "survey_worker_messages_in_flight",
        "survey_worker_campaigns",
        "survey_worker_feedback_events_total",
        "survey_worker_unsubscribe_requests_total",
        "survey_worker_jobs_total",
        "survey_worker_heartbeat_timestamp_seconds",
        "survey_worker_relay_up",
        "survey_worker_relay_deferrals_total",
    } <= used


def test_the_relay_panels_show_each_relay_and_its_deferrals_by_reason() -> None:
    targets = {t["expr"]: t for p in dashboard()["panels"] for t in p["targets"]}
    up = targets["max by (relay) (survey_worker_relay_up)"]
    assert up["legendFormat"] == "{{relay}}"
    deferrals = [e for e in targets if "survey_worker_relay_deferrals_total" in e]
    assert deferrals == [
        "sum by (relay, reason) (rate(survey_worker_relay_deferrals_total[$__rate_interval])) * 60"
    ]


def test_the_example_scrape_configuration_loads_the_rules() -> None:
    config = yaml.safe_load((OPS / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["survey-worker-web"]["authorization"]["type"] == "Bearer"
    targets = jobs["survey-worker"]["static_configs"][0]["targets"]
    assert len(set(targets)) == len(targets) > 1  # one target per worker process
    assert jobs["survey-worker-inbound"]["static_configs"][0]["targets"]
