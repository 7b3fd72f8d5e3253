"""What a correct run looks like: each non-suppressed recipient exactly once, nobody else."""

from __future__ import annotations

from collections import Counter

from bench.campaign import Imported, Recipients, email

SHOWN = 3  # addresses quoted per problem (generated test addresses, not personal data)


def _some(addresses: set[str] | list[str]) -> str:
    return ", ".join(sorted(addresses)[:SHOWN])


def problems(
    recipients: Recipients,
    imported: Imported,
    received: Counter[str],
    ledger: dict[str, int],
    worker_exits: list[int],
) -> list[str]:
    """Every way the run went wrong; empty when the sink got exactly the expected set."""
    found = []
    if imported.rows != recipients.total or imported.rejected:
        found.append(
            f"import: {imported.rows:,} rows imported and {imported.rejected:,} rejected, "
            f"expected {recipients.total:,} and none"
        )
    total = sum(received.values())
    if total != recipients.expected:
        found.append(f"sink: {total:,} recipients accepted, expected {recipients.expected:,}")
    twice = [a for a, n in received.items() if n > 1]
    if twice:
        found.append(f"sink: {len(twice):,} recipients received more than once ({_some(twice)})")
    opted_out = received.keys() & recipients.opted_out
    if opted_out:
        found.append(f"sink: {len(opted_out):,} opted-out recipients received ({_some(opted_out)})")
    expected = {email(i) for i in range(recipients.total)} - recipients.opted_out
    unexpected = received.keys() - expected - recipients.opted_out
    if unexpected:
        found.append(f"sink: {len(unexpected):,} unknown recipients ({_some(unexpected)})")
    missing = expected - received.keys()
    if missing:
        found.append(f"sink: {len(missing):,} recipients never received ({_some(missing)})")
    want = {"sent": recipients.expected, "suppressed": len(recipients.opted_out)}
    if {state: n for state, n in ledger.items() if n} != {s: n for s, n in want.items() if n}:
        found.append(f"ledger: {ledger}, expected {want}")
    failed = [code for code in worker_exits if code != 0]
    if failed:
        found.append(f"workers: exit statuses {worker_exits} after SIGTERM, expected all 0")
    return found


def metrics_problems(counted: int, ledger: dict[str, int]) -> list[str]:
    """Whether the workers' Prometheus metrics saw every decision the ledger holds."""
    decided = sum(n for state, n in ledger.items() if state != "pending")
    if counted != decided:
        return [f"metrics: the workers counted {counted:,} decisions, the ledger holds {decided:,}"]
    return []
