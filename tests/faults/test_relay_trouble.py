"""Relay trouble waits instead of failing: installed worker processes against real aiosmtpd
relays that the test stops, restarts on the same port, or makes refuse the login.

RETRY_BASE_SECONDS is short here (the probes' first wait), not the rules: a relay's
trouble still counts no attempt and fails nothing, however long it lasts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.faults.harness import WorkerProcess, campaign_status, relays, wait_until
from tests.support.pipeline import add_client, csv_of, launch, received_by
from tests.support.postfix import GOOD, postfix_relay, relay_routes
from tests.support.smtp import RecordingHandler, start_smtp_server
from tests.support.web import assert_private, cli
from worker.dev import embedded
from worker.settings import Settings

Spawn = Callable[[Settings], WorkerProcess]


async def status(settings: Settings, campaign_id: int) -> dict[str, Any]:
    done = await cli(settings, "status", str(campaign_id), "--json")
    assert done.code == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def log_lines(worker: WorkerProcess) -> list[dict[str, Any]]:
    text = worker.log_path.read_text()
    assert_private(text)
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def finished(settings: Settings, campaign_id: int) -> None:
    assert settings.database_url is not None
    url = settings.database_url

    async def done() -> bool:
        return await campaign_status(url, campaign_id) == "completed"

    await wait_until(done, timeout=180, what=f"campaign {campaign_id} to complete")


async def states(pg: asyncpg.Pool, campaign_id: int) -> dict[str, tuple[str, int]]:
    rows = await pg.fetch(
        "SELECT email, state, attempts FROM invitations WHERE campaign_id = $1", campaign_id
    )
    return {r["email"]: (r["state"], r["attempts"]) for r in rows}


async def test_a_relay_down_then_back_sends_everything_once_and_fails_nothing(
    pg: asyncpg.Pool, fast: Settings, spawn: Spawn
) -> None:
    port = embedded.free_port()
    settings = fast.model_copy(update={"smtp_port": port})
    await add_client(pg, "acme")
    emails = [f"p{i}@example.com" for i in range(12)]
    report = await launch(pg, settings, csv_of(*emails))
    worker = spawn(settings)

    async def waiting() -> bool:
        return bool((await status(settings, report.campaign_id))["waiting_for_relay"])

    await wait_until(waiting, timeout=120, what="the campaign waiting for its relay")
    seen = await status(settings, report.campaign_id)
    [relay] = seen["relays"]
    assert (relay["name"], relay["state"], relay["reason"]) == ("default", "trouble", "unreachable")
    assert "ConnectionRefused" in relay["reply"] or "Connect" in relay["reply"]
    shown = await cli(settings, "status", str(report.campaign_id))
    assert "waiting for relay default: unreachable" in shown.stdout
    # However many probes fail meanwhile, nobody's invitation is tried or failed.
    assert all(
        attempts == 0 for _state, attempts in (await states(pg, report.campaign_id)).values()
    )
    handler = RecordingHandler()
    async with start_smtp_server(handler, port=port):
        await finished(settings, report.campaign_id)
    assert received_by(handler.messages) == dict.fromkeys(emails, 1)
    assert set((await states(pg, report.campaign_id)).values()) == {("sent", 1)}
    assert await worker.terminate() == 0
    events = [line["event"] for line in log_lines(worker)]
    assert "relay.trouble" in events and "relay.recovered" in events
    assert "worker.started" in events and events[-1] == "worker.stopped"
    assert not any(e.startswith("invitation.failed") for e in events)


async def test_a_wrong_password_waits_with_the_reply_and_the_right_one_sends(
    pg: asyncpg.Pool, fast: Settings, spawn: Spawn
) -> None:
    def authenticator(
        _server: object, _session: object, _envelope: object, _mechanism: str, data: object
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.password == b"right/pass+word="
        return AuthResult(success=ok, handled=False)

    handler = RecordingHandler()
    await add_client(pg, "acme")
    emails = [f"p{i}@example.com" for i in range(6)]
    async with start_smtp_server(
        handler, authenticator=authenticator, auth_require_tls=False
    ) as port:
        wrong = relays(fast, {"esp": f"smtp://worker:wrong@127.0.0.1:{port}"})
        report = await launch(pg, wrong, csv_of(*emails))
        first = spawn(wrong)

        async def waiting() -> bool:
            return bool((await status(wrong, report.campaign_id))["waiting_for_relay"])

        await wait_until(waiting, timeout=120, what="the campaign waiting for the relay's login")
        [relay] = (await status(wrong, report.campaign_id))["relays"]
        assert (relay["name"], relay["reason"]) == ("esp", "auth_failed")
        assert relay["reply"].startswith("535")
        checked = await cli(wrong, "check-relay")
        assert checked.code == 1
        assert checked.stdout.startswith("esp: auth_failed: 535")
        assert await first.terminate() == 0
        trouble = [line for line in log_lines(first) if line["event"] == "relay.trouble"]
        assert trouble and trouble[0]["relay"] == "esp" and trouble[0]["smtp_code"] == 535
        assert "wrong" not in first.log_path.read_text()
        assert handler.messages == []

        right = relays(fast, {"esp": f"smtp://worker:right%2Fpass%2Bword%3D@127.0.0.1:{port}"})
        spawn(right)
        await finished(right, report.campaign_id)
    assert received_by(handler.messages) == dict.fromkeys(emails, 1)
    assert set((await states(pg, report.campaign_id)).values()) == {("sent", 1)}


async def test_with_one_relay_down_everything_leaves_through_the_other(
    pg: asyncpg.Pool, fast: Settings, spawn: Spawn
) -> None:
    down = embedded.free_port()
    handler = RecordingHandler()
    await add_client(pg, "acme")
    emails = [f"p{i}@example.com" for i in range(16)]
    async with start_smtp_server(handler) as port:
        settings = relays(
            fast, {"esp": f"smtp://127.0.0.1:{down}", "backup": f"smtp://127.0.0.1:{port}"}
        )
        report = await launch(pg, settings, csv_of(*emails))
        worker = spawn(settings)
        await finished(settings, report.campaign_id)
        assert (await status(settings, report.campaign_id))["waiting_for_relay"] is False
    assert received_by(handler.messages) == dict.fromkeys(emails, 1)
    assert set((await states(pg, report.campaign_id)).values()) == {("sent", 1)}
    assert await worker.terminate() == 0
    [started] = [line for line in log_lines(worker) if line["event"] == "worker.started"]
    assert started["relays"]["esp"]["state"] == "trouble"
    assert started["relays"]["backup"]["state"] == "ok"


async def test_a_deferral_line_carries_the_relay_and_the_reply(
    pg: asyncpg.Pool, fast: Settings, spawn: Spawn, tmp_path: Path
) -> None:
    handler = RecordingHandler()
    handler.on("busy@example.com", reply="452 4.2.2 Mailbox busy for busy@example.com", times=1)
    await add_client(pg, "acme")
    async with start_smtp_server(handler) as port:
        settings = fast.model_copy(update={"smtp_port": port})
        report = await launch(pg, settings, csv_of("busy@example.com", "ok@example.com"))
        worker = spawn(settings)
        await finished(settings, report.campaign_id)
    assert await worker.terminate() == 0
    [deferred] = [line for line in log_lines(worker) if line["event"] == "invitation.deferred"]
    assert deferred["relay"] == "default"
    assert (deferred["smtp_code"], deferred["smtp_status"]) == (452, "4.2.2")
    assert deferred["smtp_reply"].startswith("4.2.2 Mailbox busy for")
    assert deferred["reason"] == "smtp_transient" and deferred["attempt"] == 1


async def test_each_clients_mail_leaves_through_its_own_route(
    pg: asyncpg.Pool, fast: Settings, spawn: Spawn
) -> None:
    a, b = RecordingHandler(), RecordingHandler()
    down = embedded.free_port()
    people = {c: [f"{c}{i}@example.com" for i in range(8)] for c in ("acme", "globex", "initech")}
    async with start_smtp_server(a) as port_a, start_smtp_server(b) as port_b:
        settings = relays(
            fast,
            {
                "a": f"smtp://127.0.0.1:{port_a}",
                "b": f"smtp://127.0.0.1:{port_b}",
                "c": f"smtp://127.0.0.1:{down}",
            },
        )
        for client, route in (("acme", "a"), ("globex", "b"), ("initech", "c")):
            await add_client(pg, client)
            updated = await cli(settings, "client", "update", client, "--relays", route)
            assert updated.code == 0, updated.stderr
        routed = await cli(settings, "client", "list", "--json")
        assert {c["id"]: c["relays"] for c in json.loads(routed.stdout)} == {
            "acme": ["a"],
            "globex": ["b"],
            "initech": ["c"],
        }
        ids = {
            client: (await launch(pg, settings, csv_of(*emails), client_id=client)).campaign_id
            for client, emails in people.items()
        }
        spawn(settings)
        await finished(settings, ids["acme"])
        await finished(settings, ids["globex"])
        # initech's only relay is down: its campaign waits while the others completed.
        waiting = await status(settings, ids["initech"])
        assert waiting["status"] == "running" and waiting["waiting_for_relay"] is True
        assert [r["name"] for r in waiting["relays"]] == ["c"]
        assert waiting["counts"] == {"pending": 8}
    assert received_by(a.messages) == dict.fromkeys(people["acme"], 1)
    assert received_by(b.messages) == dict.fromkeys(people["globex"], 1)


async def test_a_standby_carries_the_mail_only_while_the_weighted_relay_is_in_trouble(
    pg: asyncpg.Pool, fast: Settings, spawn: Spawn
) -> None:
    main, standby = RecordingHandler(), RecordingHandler()
    main_port = embedded.free_port()
    await add_client(pg, "acme")
    first = [f"early{i}@example.com" for i in range(6)]
    later = [f"late{i}@example.com" for i in range(6)]
    async with start_smtp_server(standby) as standby_port:
        settings = relays(
            fast,
            {"main": f"smtp://127.0.0.1:{main_port}", "spare": f"smtp://127.0.0.1:{standby_port}"},
            SMTP_RELAY_SPARE_WEIGHT="0",
        )
        worker = spawn(settings)
        early = await launch(pg, settings, csv_of(*first))
        await finished(settings, early.campaign_id)
        async with start_smtp_server(main, port=main_port):

            async def main_back() -> bool:
                states = await status(settings, early.campaign_id)
                return all(r["state"] == "ok" for r in states["relays"])

            await wait_until(main_back, timeout=120, what="the main relay's probe to pass")
            late = await launch(pg, settings, csv_of(*later))
            await finished(settings, late.campaign_id)
        assert await worker.terminate() == 0
    assert received_by(standby.messages) == dict.fromkeys(first, 1)
    assert received_by(main.messages) == dict.fromkeys(later, 1)


async def test_postfix_carries_the_mail_while_the_other_relay_is_down(
    pg: asyncpg.Pool, fast: Settings, spawn: Spawn
) -> None:
    sink, bounces = RecordingHandler(), RecordingHandler()
    down = embedded.free_port()
    emails = [f"p{i}@{GOOD}" for i in range(8)]
    await add_client(pg, "acme")
    async with (
        start_smtp_server(sink) as sink_port,
        start_smtp_server(bounces) as bounce_port,
        postfix_relay(relay_routes(sink_port=sink_port, bounce_port=bounce_port)) as mta,
    ):
        settings = relays(
            fast, {"esp": f"smtp://127.0.0.1:{down}", "postfix": f"smtp://127.0.0.1:{mta.port}"}
        )
        report = await launch(pg, settings, csv_of(*emails))
        spawn(settings)
        await finished(settings, report.campaign_id)

        async def relayed() -> bool:
            return len(sink.messages) >= len(emails)

        await wait_until(relayed, timeout=120, what="Postfix to relay every message to the sink")
    assert received_by(sink.messages) == dict.fromkeys(emails, 1)
    assert set((await states(pg, report.campaign_id)).values()) == {("sent", 1)}


async def test_a_relays_own_rate_holds_its_messages_back(
    pg: asyncpg.Pool, fast: Settings, spawn: Spawn
) -> None:
    handler = RecordingHandler()
    emails = [f"p{i}@example.com" for i in range(16)]
    await add_client(pg, "acme")
    async with start_smtp_server(handler) as port:
        settings = relays(fast, {"slow": f"smtp://127.0.0.1:{port}"}, SMTP_RELAY_SLOW_RATE="4")
        report = await launch(pg, settings, csv_of(*emails))
        spawn(settings)
        await finished(settings, report.campaign_id)
    assert received_by(handler.messages) == dict.fromkeys(emails, 1)
    # 16 messages at 4 a second take three whole windows after the first; unpaced, this
    # server takes them all within a fraction of a second. A slow machine only adds time.
    assert handler.arrivals[-1] - handler.arrivals[0] >= 2.0
