"""Prometheus metrics from real processes: a worker sending a campaign serves them on
METRICS_PORT, the web app at /metrics (behind METRICS_TOKEN when it is set)."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from tests.support.pipeline import add_client, csv_of, launch, make_worker, opt_out
from tests.support.prometheus import samples
from tests.support.smtp import RecordingHandler
from tests.support.system import free_port
from tests.support.web import cli, private_logs, serving, start_cli
from worker.settings import Settings
from worker.suppression import Scope


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    with private_logs() as captured:
        yield captured


async def test_a_worker_serves_its_campaigns_decisions_on_metrics_port(
    pg: asyncpg.Pool, settings: Settings, smtp: tuple[RecordingHandler, int]
) -> None:
    port = free_port()
    local = settings.model_copy(update={"metrics_port": port})
    await add_client(pg, "acme")
    emails = [f"person{i}@example.com" for i in range(25)]
    await opt_out(pg, local, emails[0], Scope("survey", "acme"))
    await launch(pg, local, csv_of(*emails))
    worker = make_worker(local)
    try:
        await worker.main()
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://127.0.0.1:{port}/metrics")
    finally:
        await worker.close()
    assert answer.status_code == 200
    found = samples(answer.text)
    assert found['survey_worker_invitations_total{reason="none",state="sent"}'] == 24
    assert found['survey_worker_invitations_total{reason="client_opt_out",state="suppressed"}'] == 1
    assert found['survey_worker_smtp_replies_total{class="2xx"}'] == 24
    assert found["survey_worker_send_latency_seconds_count"] == 24
    assert 0 < found["survey_worker_send_latency_seconds_sum"] < 24 * 10
    # slice_size 10: three send_batch jobs, each waited for once.
    assert found["survey_worker_queue_wait_seconds_count"] == 3
    assert found["survey_worker_messages_in_flight"] == 0
    assert found['survey_worker_jobs_total{result="complete"}'] >= 4
    assert found['survey_worker_jobs_total{result="failed"}'] == 0
    assert found["survey_worker_heartbeat_timestamp_seconds"] > 0
    # No campaign, client or recipient in any label.
    assert "acme" not in answer.text and "example.com" not in answer.text
    # The server stops with the worker.
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/metrics")


async def test_web_metrics_need_the_token_and_show_campaigns_and_unsubscribes(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    local = settings.model_copy(update={"metrics_token": SecretStr("scrape-token-0123456789")})
    await add_client(pg, "acme")
    await launch(pg, local, csv_of("ann@example.com"), enqueue=False)
    async with serving(local) as base, httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/unsubscribe/not-a-token")).status_code == 400
        refused = await client.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        answer = await client.get(
            "/metrics", headers={"Authorization": "Bearer scrape-token-0123456789"}
        )
        open_metrics = await client.get(
            "/metrics",
            headers={
                "Authorization": "Bearer scrape-token-0123456789",
                "Accept": "application/openmetrics-text; version=1.0.0",
            },
        )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    found = samples(answer.text)
    assert found['survey_worker_campaigns{status="running"}'] == 1
    assert found['survey_worker_campaigns{status="completed"}'] == 0
    assert found["survey_worker_ledger_up"] == 1
    assert found["survey_worker_invitations_due"] == 1
    assert found['survey_worker_unsubscribe_requests_total{method="GET",outcome="invalid"}'] == 1
    assert found['survey_worker_http_requests_total{route="metrics",status="401"}'] == 2
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.endswith("# EOF\n")


async def test_web_metrics_are_open_without_a_token_and_say_when_postgres_is_down(
    settings: Settings,
) -> None:
    down = "postgresql://nobody@127.0.0.1:1/none"
    async with serving(settings, database_url=down) as base, httpx.AsyncClient() as client:
        answer = await client.get(f"{base}/metrics")
    assert answer.status_code == 200
    found = samples(answer.text)
    assert found["survey_worker_ledger_up"] == 0
    assert not any(k.startswith("survey_worker_campaigns{") for k in found)


async def test_the_worker_command_serves_metrics_while_it_sends(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    port = free_port()
    await add_client(pg, "acme")
    worker = await start_cli(settings, "worker", env={"METRICS_PORT": str(port)})
    try:
        await launch(pg, settings, csv_of(*(f"p{i}@example.com" for i in range(30))))
        found: dict[str, float] = {}
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                try:
                    found = samples((await client.get(f"http://127.0.0.1:{port}/")).text)
                except httpx.TransportError:
                    found = {}
                if found.get('survey_worker_invitations_total{reason="none",state="sent"}') == 30:
                    break
                await asyncio.sleep(0.1)
        assert found['survey_worker_invitations_total{reason="none",state="sent"}'] == 30
        assert found["survey_worker_heartbeat_timestamp_seconds"] > 0
        assert found["survey_worker_pause_complaint_rate"] == settings.pause_complaint_rate
        worker.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(worker.communicate(), 60)
        assert worker.returncode == 0, stderr.decode()
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()


async def test_a_worker_whose_metrics_port_is_taken_does_not_start(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104
        taken.listen()
        port = taken.getsockname()[1]
        result = await cli(settings, "worker", env={"METRICS_PORT": str(port)}, timeout=60)
    assert result.code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: METRICS_PORT: cannot listen on 0.0.0.0:{port}: address already in use"
    )
