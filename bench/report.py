"""The figures of a run, next to the targets of issue 5, as a table or as JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from bench.procfs import Machine

MB = 1024 * 1024
TARGET_RATE = 6_000.0  # invitations/s
TARGET_RATIO = 0.2  # of the smtp-source rate
TARGET_RSS = 150 * MB  # worker peak
TARGET_IMPORT_ROWS = 1_000_000
TARGET_IMPORT_SECONDS = 30.0


@dataclass(frozen=True)
class Figures:
    """Everything one run measured. Times in seconds, sizes in bytes."""

    recipients: int
    opted_out: int
    workers: int
    slice_size: int
    smtp_connections: int
    relays: int
    sink: str
    builtin_sink: bool
    seconds: float  # t0 (launch_campaign enqueued) → last message accepted by the sink
    invitations_per_s: float
    messages_per_s: float
    latency_p50: float
    latency_p99: float
    worker_peak_rss: int
    redis_idle_memory: int
    redis_peak_memory: int
    message_size: int
    # smtp-source into the same sink right before t0 and right after the run (None: not
    # installed); the higher is the ceiling, so work left over after the run (autovacuum, a
    # checkpoint) slowing the second cannot raise the ratio.
    ceiling_before_per_s: float | None
    ceiling_after_per_s: float | None
    import_seconds: float
    import_rows_per_s: float
    cpu_seconds: dict[str, float]  # per part, from t0 until the campaign was completed
    cpu_window: float  # those seconds of wall-clock time
    machine: Machine
    problems: list[str]
    metrics_decisions: int  # what the workers' Prometheus metrics counted

    @property
    def ceiling_per_s(self) -> float | None:
        measured = [c for c in (self.ceiling_before_per_s, self.ceiling_after_per_s) if c]
        return max(measured) if measured else None

    @property
    def ratio(self) -> float | None:
        ceiling = self.ceiling_per_s
        return None if ceiling is None else self.invitations_per_s / ceiling

    def targets_met(self) -> dict[str, bool | None]:
        """Each target: met, missed, or None when this run cannot tell."""
        comparable = not self.builtin_sink
        return {
            "invitations_per_s": self.invitations_per_s >= TARGET_RATE if comparable else None,
            "ratio": None if self.ratio is None or not comparable else self.ratio >= TARGET_RATIO,
            "worker_peak_rss": self.worker_peak_rss <= TARGET_RSS,
            # A smaller import is dominated by fixed costs: it says nothing about 1M rows.
            "import": self.import_seconds <= TARGET_IMPORT_SECONDS
            if self.recipients >= TARGET_IMPORT_ROWS
            else None,
        }


def as_json(figures: Figures) -> str:
    """The figures as one JSON object."""
    data = dataclasses.asdict(figures)
    data["ceiling_per_s"] = figures.ceiling_per_s
    data["ratio"] = figures.ratio
    data["targets"] = {
        "invitations_per_s": TARGET_RATE,
        "ratio": TARGET_RATIO,
        "worker_peak_rss": TARGET_RSS,
        "import_1m_seconds": TARGET_IMPORT_SECONDS,
    }
    data["targets_met"] = figures.targets_met()
    data["verified"] = not figures.problems
    return json.dumps(data, indent=2)


def _rate(per_s: float | None) -> str:
    return "n/a" if per_s is None else f"{per_s:,.0f}"


def _mark(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "n/a"}[met]


Row = tuple[str, str, str, bool | None]


def _down(value: float, decimals: int) -> str:
    """`value` cut (not rounded) to `decimals`, so that it reads >= a target only if it is."""
    scale = 10**decimals
    return f"{math.floor(value * scale) / scale:,.{decimals}f}"


def _rows(f: Figures) -> list[Row]:
    met = f.targets_met()
    ceiling = (
        "not measured"
        if f.ceiling_per_s is None
        else f"{f.ceiling_per_s:,.0f} messages/s (before {_rate(f.ceiling_before_per_s)}, "
        f"after {_rate(f.ceiling_after_per_s)})"
    )
    imported = f"{f.import_seconds:.1f} s ({f.import_rows_per_s:,.0f} rows/s)"
    redis = f"{f.redis_peak_memory / MB:.1f} MB (idle {f.redis_idle_memory / MB:.1f} MB)"
    return [
        (
            "invitations/s",
            _down(f.invitations_per_s, 0),
            f">= {TARGET_RATE:,.0f}",
            met["invitations_per_s"],
        ),
        ("messages/s", f"{f.messages_per_s:,.0f}", "", None),
        ("latency p50 / p99", f"{f.latency_p50:.2f} s / {f.latency_p99:.2f} s", "", None),
        (
            "worker peak RSS",
            f"{f.worker_peak_rss / MB:.0f} MB",
            f"<= {TARGET_RSS // MB} MB",
            met["worker_peak_rss"],
        ),
        ("Redis peak memory", redis, "", None),
        ("smtp-source ceiling", ceiling, "", None),
        (
            "ratio to ceiling",
            "n/a" if f.ratio is None else _down(f.ratio, 3),
            f">= {TARGET_RATIO}",
            met["ratio"],
        ),
        ("import", imported, f"1M rows <= {TARGET_IMPORT_SECONDS:.0f} s", met["import"]),
    ]


def as_table(figures: Figures) -> str:
    """The figures as a table for a terminal."""
    f = figures
    m = f.machine
    lines = [
        f"survey-worker bench: {f.recipients:,} recipients ({f.opted_out:,} opted out), "
        f"{f.workers} workers, SLICE_SIZE={f.slice_size}, SMTP_CONNECTIONS={f.smtp_connections}"
        + (f" over {f.relays} relays" if f.relays > 1 else ""),
        f"machine: {m.cores} cores, {m.cpu}, {m.memory_bytes / 1024**3:.1f} GiB of memory",
        f"sink: {f.sink}; messages average {f.message_size:,} bytes",
    ]
    if f.builtin_sink:
        lines.append(
            "WARNING: the built-in Python sink was used (smtp-sink is not installed, or "
            "--builtin-sink). The sink is the bottleneck: invitations/s and the ratio are NOT "
            "comparable with the targets. Install Debian's postfix package (make bench does, "
            "as root)."
        )
    if f.ceiling_per_s is None:
        lines.append("ceiling not measured: smtp-source is not installed (Debian package postfix)")
    rows = _rows(f)
    name_width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    target_width = max(len(r[2]) for r in rows)
    lines += ["", f"{'figure':<{name_width}}  {'measured':<{value_width}}  target"]
    for name, value, target, met in rows:
        verdict = f"{target:<{target_width}}  {_mark(met)}" if target else ""
        lines.append(f"{name:<{name_width}}  {value:<{value_width}}  {verdict}".rstrip())
    if f.recipients < TARGET_IMPORT_ROWS:
        lines.append('(the import target needs BENCH_ARGS="--recipients 1000000")')
    available = f.cpu_window * m.cores
    cpu = ", ".join(f"{name} {s:.1f} ({s / available:.0%})" for name, s in f.cpu_seconds.items())
    lines += [
        "",
        f"send phase: {f.seconds:.2f} s from enqueue to the last message accepted",
        f"the workers' Prometheus metrics counted {f.metrics_decisions:,} decisions",
        f"CPU seconds until completed, of {m.cores} cores x {f.cpu_window:.1f} s: {cpu}",
        "",
    ]
    if f.problems:
        lines.append("VERIFICATION FAILED:")
        lines += [f"  - {p}" for p in f.problems]
    else:
        lines.append(
            f"verified: the sink received each of the {f.recipients - f.opted_out:,} "
            f"non-suppressed recipients exactly once and none of the {f.opted_out:,} opted "
            "out; the ledger agrees"
        )
    return "\n".join(lines)
