"""Every line a `survey-worker` service writes is one JSON object, the lines of arq,
asyncpg and uncaught exceptions included, and none holds an address."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import asyncpg

from tests.faults.harness import wait_until
from tests.support.pipeline import add_client, csv_of, enqueue_launch, launch
from tests.support.proxy import proxy_to
from tests.support.smtp import RecordingHandler
from tests.support.web import assert_private, start_cli
from worker.settings import Settings

PEOPLE = ("ann@example.com", "bob@example.com")


async def read_lines(stream: asyncio.StreamReader | None, into: list[str]) -> None:
    assert stream is not None
    while line := await stream.readline():
        into.append(line.decode(errors="replace"))


def parsed(lines: list[str]) -> list[dict[str, Any]]:
    """Each line as JSON; fails naming the first that is not one JSON object."""
    objects = []
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(value, dict), line
        objects.append(value)
    return objects


async def test_a_worker_whose_postgres_goes_away_writes_only_json_lines(
    pg: asyncpg.Pool, settings: Settings, smtp: tuple[RecordingHandler, int]
) -> None:
    handler = smtp[0]
    await add_client(pg, "acme")
    await launch(pg, settings, csv_of(*PEOPLE))
    async with proxy_to(settings.database_url or "") as proxy:
        through = settings.model_copy(
            update={
                "database_url": proxy.url(settings.database_url or ""),
                "reconcile_interval_seconds": 1,
            }
        )
        process = await start_cli(through, "worker")
        stdout: list[str] = []
        stderr: list[str] = []
        readers = asyncio.gather(
            read_lines(process.stdout, stdout), read_lines(process.stderr, stderr)
        )
        try:

            async def delivered() -> bool:
                return len(handler.messages) == len(PEOPLE)

            await wait_until(delivered, what="the first campaign through the proxy")
            await proxy.cut()
            # Work that needs Postgres while it is away: a launch and the reconcile cron.
            second = await launch(pg, settings, csv_of(*PEOPLE), enqueue=False)
            await enqueue_launch(settings, second.campaign_id)

            async def failed() -> bool:
                return any("error_type" in line for line in stdout + stderr)

            await wait_until(failed, timeout=30, what="a line about Postgres being away")
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)
            await readers
    lines = parsed(stdout + stderr)
    assert_private("".join(stdout + stderr))
    errors = [line for line in lines if "error_type" in line]
    assert errors, stdout + stderr
    assert all(line["error"] and line["level"] for line in errors)
    # The libraries' own lines (asyncpg's pool, arq) come through structlog too, named.
    foreign = [line for line in lines if line.get("logger", "").startswith(("asyncpg", "arq"))]
    assert foreign, stdout + stderr
    assert all("\n" not in line["event"] for line in foreign)
