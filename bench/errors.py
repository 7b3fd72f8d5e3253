"""The bench's one error type: a run that could not be measured."""

from __future__ import annotations


class BenchError(Exception):
    """The run stopped before it had figures (a service, the sink or a worker failed)."""
