"""A campaign started as an operator starts it: `client add` and `launch` as processes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.pipeline import csv_of
from tests.support.web import cli, launch_args
from worker.settings import Settings


async def add_and_launch(
    settings: Settings,
    people: Sequence[str],
    folder: Path,
    *,
    env: Mapping[str, str | None] | None = None,
) -> int:
    """`client add acme` and `launch` of a survey campaign to `people` (the recipients
    file written in `folder`) with `env`; the campaign's id."""
    added = await cli(
        settings, "client", "add", "acme", "--name", "Acme", "--sender", "s@acme.example", env=env
    )
    assert added.code == 0, added.stderr
    recipients = folder / "people.csv"
    recipients.write_text(csv_of(*people))
    launched = await cli(settings, *launch_args(recipients), "--json", env=env)
    assert launched.code == 0, launched.stderr
    campaign_id: int = json.loads(launched.stdout)["campaign_id"]
    return campaign_id
