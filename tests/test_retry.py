"""`retry`: a campaign's invitations that failed for a transient reason go back to pending,
through the installed command and `POST /v1/campaigns/{id}/retry`; hard bounces, refusals
and opt-outs never do, and the send-time check runs again for those that do."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import httpx

from tests.support.pipeline import (
    add_client,
    csv_of,
    enqueue_launch,
    launch,
    opt_out,
    run_workers,
)
from tests.support.smtp import RecordingHandler
from tests.support.web import cli, serving
from tests.test_api import bearer, make_key
from tests.test_api_bounds import conforms
from worker import campaigns, relay_check
from worker.settings import Settings
from worker.suppression import Scope

SMTP = tuple[RecordingHandler, int]
ACME = Scope("survey", "acme")
# Who failed for a reason `retry` puts back, as a relay outage past RETRY_HORIZON (or, before
# it, SMTP_MAX_ATTEMPTS) and a 4xx at the last try leave them.
TRANSIENT = {
    "horizon@example.com": "retry_horizon",
    "later@example.com": "retry_horizon",
    "now550@example.com": "retry_horizon",
    "transient@example.com": "smtp_transient",
    "old@example.com": "max_attempts",
}


def test_every_relay_trouble_reason_is_retried() -> None:
    assert set(relay_check.REASONS) <= set(campaigns.RETRYABLE)


async def fail(pg: asyncpg.Pool, failures: dict[str, str]) -> None:
    """Mark these addresses' invitations failed for these reasons, past their horizon."""
    await pg.execute(
        """UPDATE invitations i SET state = 'failed', reason = f.reason, attempts = 9,
               smtp_code = 451, first_attempt_at = now() - interval '3 days'
           FROM unnest($1::text[], $2::text[]) AS f(email, reason)
           WHERE i.email = f.email""",
        list(failures),
        list(failures.values()),
    )


async def states(pg: asyncpg.Pool) -> dict[str, tuple[str, str | None]]:
    rows = await pg.fetch("SELECT email, state, reason FROM invitations")
    return {r["email"]: (r["state"], r["reason"]) for r in rows}


async def test_retry_sends_the_transient_failures_again_and_nothing_else(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    handler = smtp[0]
    await add_client(pg, "acme")
    everyone = ["ok@example.com", "gone@example.com", "refused@example.com", "optout@example.com"]
    report = await launch(pg, settings, csv_of(*everyone, *TRANSIENT), enqueue=False)
    campaign = str(report.campaign_id)
    await fail(pg, TRANSIENT)
    handler.on("gone@example.com", reply="550 5.1.1 No such user")
    handler.on("refused@example.com", reply="550 5.7.1 Refused by policy")
    await opt_out(pg, settings, "optout@example.com", ACME)
    await enqueue_launch(settings, report.campaign_id)
    ran = await cli(settings, "worker", "--burst")
    assert ran.code == 0, ran.stderr
    assert await pg.fetchval("SELECT status FROM campaigns") == "completed"
    before = await states(pg)
    assert [m.recipients for m in handler.messages] == [("ok@example.com",)]

    # Meanwhile one person opted out, and another's mailbox went away.
    await opt_out(pg, settings, "later@example.com", ACME)
    handler.on("now550@example.com", reply="550 5.1.1 No such user")
    one = await cli(settings, "retry", campaign, "--reason", "smtp_transient")
    assert one.code == 0, one.stderr
    assert one.stdout.splitlines() == [
        f"campaign {campaign}: requeued 1 (running)",
        "  smtp_transient: 1",
    ]
    rest = await cli(settings, "retry", campaign, "--json")
    assert rest.code == 0, rest.stderr
    assert json.loads(rest.stdout) == {
        "campaign_id": report.campaign_id,
        "status": "running",
        "requeued": 4,
        "by_reason": {"max_attempts": 1, "retry_horizon": 3},
    }
    # A fresh horizon: no attempt counted, no first attempt.
    reopened = await pg.fetch(
        "SELECT attempts, first_attempt_at, smtp_code FROM invitations WHERE state = 'pending'"
    )
    assert [tuple(r) for r in reopened] == [(0, None, None)] * 5

    ran = await cli(settings, "worker", "--burst")
    assert ran.code == 0, ran.stderr
    assert await pg.fetchval("SELECT status FROM campaigns") == "completed"
    assert sorted(r for m in handler.messages for r in m.recipients) == [
        "horizon@example.com",
        "ok@example.com",
        "old@example.com",
        "transient@example.com",
    ]
    after = await states(pg)
    assert after["later@example.com"] == ("suppressed", "client_opt_out")
    assert after["now550@example.com"] == ("failed", "hard_bounce")
    for untouched in everyone:
        assert after[untouched] == before[untouched]
    assert before["gone@example.com"] == ("failed", "hard_bounce")
    assert before["refused@example.com"] == ("failed", "smtp_rejected")
    assert before["optout@example.com"] == ("suppressed", "client_opt_out")


async def test_retry_refuses_a_cancelled_campaign_a_missing_one_and_other_reasons(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    await add_client(pg, "acme")
    report = await launch(pg, settings, csv_of("a@example.com", "b@example.com"), enqueue=False)
    campaign = str(report.campaign_id)
    await fail(pg, {"a@example.com": "retry_horizon", "b@example.com": "hard_bounce"})
    await pg.execute("UPDATE campaigns SET status = 'paused'")
    # A paused campaign stays paused: `resume` sends what was put back.
    paused = await cli(settings, "retry", campaign, "--json")
    assert json.loads(paused.stdout) == {
        "campaign_id": report.campaign_id,
        "status": "paused",
        "requeued": 1,
        "by_reason": {"retry_horizon": 1},
    }
    await fail(pg, {"a@example.com": "retry_horizon"})
    cancelled = await cli(settings, "cancel", campaign)
    assert cancelled.code == 0, cancelled.stderr
    before = await states(pg)
    refusals = {
        (campaign,): f"Error: campaign {campaign} was cancelled: nothing is sent again",
        ("999",): "Error: no campaign 999",
        (campaign, "--reason", "hard_bounce"): "Error: Invalid value for '--reason': "
        "'hard_bounce' is not one of 'retry_horizon', 'max_attempts', 'smtp_transient', "
        "'unreachable', 'tls_failed', 'auth_failed', 'throttled', 'refused'.",
    }
    for args, error in refusals.items():
        done = await cli(settings, "retry", *args)
        assert (done.code, done.stdout, len(done.stderr.splitlines())) == (1, "", 1), args
        assert done.stderr.startswith(error), (args, done.stderr)
    assert (
        await states(pg)
        == before
        == {
            "a@example.com": ("failed", "retry_horizon"),
            "b@example.com": ("failed", "hard_bounce"),
        }
    )


async def test_the_api_retries_only_the_keys_own_campaigns(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    await add_client(pg, "acme")
    await add_client(pg, "globex")
    keys = {"acme": await make_key(pg, "acme"), "globex": await make_key(pg, "globex")}
    report = await launch(pg, settings, csv_of("a@example.com", "b@example.com"), enqueue=False)
    other = await launch(pg, settings, csv_of("c@example.com"), enqueue=False)
    await fail(
        pg,
        {
            "a@example.com": "smtp_transient",
            "b@example.com": "retry_horizon",
            "c@example.com": "retry_horizon",
        },
    )
    await pg.execute("UPDATE campaigns SET status = 'completed'")
    await pg.execute("UPDATE campaigns SET status = 'cancelled' WHERE id = $1", other.campaign_id)
    path = f"/v1/campaigns/{report.campaign_id}/retry"

    async def post(key: str, *, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        return await http.post(path, headers={**bearer(keys[key]), **(headers or {})}, **kwargs)

    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as http:
        theirs = await post("globex")
        assert (theirs.status_code, theirs.json()) == (404, {"error": "no such campaign"})
        bodies = (
            {"reasons": ["hard_bounce"]},
            {"reasons": "smtp_transient"},
            {"reasons": []},
            {},
            [1],
        )
        for body in bodies:
            bad = await post("acme", json=body)
            assert bad.status_code == 400 and bad.json()["error"], body
        malformed = await post("acme", content=b"{", headers={"Content-Type": "application/json"})
        assert malformed.status_code == 400
        one = await post("acme", json={"reasons": ["smtp_transient"]})
        assert (one.status_code, one.json()) == (
            200,
            {
                "campaign_id": report.campaign_id,
                "status": "running",
                "requeued": 1,
                "by_reason": {"smtp_transient": 1},
            },
        )
        rest = await post("acme")
        assert rest.status_code == 200 and rest.json()["by_reason"] == {"retry_horizon": 1}
        document = (await http.get("/v1/openapi.json")).json()
        cancelled = await http.post(
            f"/v1/campaigns/{other.campaign_id}/retry", headers=bearer(keys["acme"])
        )
        assert cancelled.status_code == 409
        assert cancelled.json() == {
            "error": f"campaign {other.campaign_id} was cancelled: nothing is sent again"
        }
    for answer in (theirs, bad, malformed, one, rest, cancelled):
        conforms(document, "/campaigns/{campaign_id}/retry", "post", answer)
    # The campaign was queued again: a worker sends what was put back.
    await run_workers(settings)
    assert sorted(r for m in smtp[0].messages for r in m.recipients) == [
        "a@example.com",
        "b@example.com",
    ]
    assert (
        await pg.fetchval("SELECT status FROM campaigns WHERE id = $1", report.campaign_id)
        == "completed"
    )
