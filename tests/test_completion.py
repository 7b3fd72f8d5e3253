"""Completion on real components: campaigns sent through the pipeline to a real SMTP
server, the survey references read from the messages received, and completions reported
to the real web app (`POST /webhooks/completion`, signed here as Standard Webhooks sign)
and to the installed `survey-worker complete`, against real Postgres and Redis."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from pydantic import SecretStr

from tests.faults.harness import wait_until
from tests.support.pipeline import add_client, csv_of, launch, parse, run_workers
from tests.support.smtp import RecordedMessage, RecordingHandler
from tests.support.web import assert_private, cli, private_logs, serving, start_cli
from worker import addresses, completion, db, privacy
from worker.dev.embedded import free_port
from worker.settings import Settings

KEY = hashlib.sha256(b"completion test key").digest()
SECRET = "whsec_" + base64.b64encode(KEY).decode()
PEOPLE = ("ann@example.com", "bob@example.com", "cat@example.com")
# A reference of links.survey_ref's shape that no invitation has.
STRANGER = "AAAAAAAAAAAAAAAA"
SURVEY_LINK = re.compile(r"https://survey\.test/s\?r=([A-Za-z0-9_-]+)")


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    with private_logs() as captured:
        yield captured


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"completion_webhook_secret": SecretStr(SECRET)})


@pytest.fixture
async def app(hook_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(hook_settings) as base, httpx.AsyncClient(base_url=base) as client:
        yield client


def signed(
    body: bytes,
    *,
    key: bytes = KEY,
    webhook_id: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    """Standard Webhooks headers for `body`: HMAC-SHA256 of `id.timestamp.body`."""
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(key, f"{webhook_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        "content-type": "application/json",
    }


async def post(
    client: httpx.AsyncClient, value: object, *, webhook_id: str | None = None
) -> httpx.Response:
    body = orjson.dumps(value)
    headers = signed(body, webhook_id=webhook_id)
    return await client.post("/webhooks/completion", content=body, headers=headers)


def ref_in(message: RecordedMessage) -> str:
    """The survey reference of a received message's survey link."""
    text = parse(message).get_body(("plain",))
    assert text is not None
    (ref,) = SURVEY_LINK.findall(text.get_content())
    return str(ref)


async def sent_campaign(
    pg: asyncpg.Pool, settings: Settings, handler: RecordingHandler, *people: str
) -> dict[str, str]:
    """Launch and send a campaign to `people`; the survey reference each one received."""
    if not await pg.fetchval("SELECT true FROM clients WHERE id = 'acme'"):
        await add_client(pg, "acme")
    already = len(handler.messages)
    await launch(pg, settings, csv_of(*people))
    await run_workers(settings)
    refs = {message.recipients[0]: ref_in(message) for message in handler.messages[already:]}
    assert sorted(refs) == sorted(people)
    return refs


async def completed(pg: asyncpg.Pool) -> dict[str, object]:
    """Each invitation's completed_at, by address."""
    rows = await pg.fetch("SELECT email, completed_at FROM invitations ORDER BY id")
    return {r["email"]: r["completed_at"] for r in rows}


async def nothing_recorded(pg: asyncpg.Pool) -> bool:
    return (
        await pg.fetchval("SELECT count(*) FROM invitations WHERE completed_at IS NOT NULL") == 0
        and await pg.fetchval("SELECT count(*) FROM completion_webhooks") == 0
    )


# --- The webhook ---------------------------------------------------------------------------


async def test_a_completion_marks_its_invitation_once_and_the_first_wins(
    pg: asyncpg.Pool,
    hook_settings: Settings,
    smtp: tuple[RecordingHandler, int],
    app: httpx.AsyncClient,
    logs: list[dict[str, Any]],
) -> None:
    refs = await sent_campaign(pg, hook_settings, smtp[0], *PEOPLE)
    first = await post(app, {"ref": refs["ann@example.com"]})
    assert first.status_code == 200, first.text
    assert first.json() == {"completed": 1, "already_completed": 0, "unknown": []}
    after_first = await completed(pg)
    assert after_first["ann@example.com"] is not None
    assert after_first["bob@example.com"] is None and after_first["cat@example.com"] is None

    second = await post(app, {"refs": [refs["ann@example.com"], refs["bob@example.com"]]})
    assert second.json() == {"completed": 1, "already_completed": 1, "unknown": []}
    after_second = await completed(pg)
    assert after_second["ann@example.com"] == after_first["ann@example.com"]
    assert after_second["bob@example.com"] is not None
    assert after_second["cat@example.com"] is None

    status = await cli(hook_settings, "status", "1", "--json")
    assert status.code == 0, status.stderr
    assert orjson.loads(status.stdout)["completed"] == 2

    lines = [line for line in logs if line["event"] == "invitation.completed"]
    ids = dict(await pg.fetch("SELECT email, id FROM invitations"))
    hashes = dict(await pg.fetch("SELECT email, email_hash FROM invitations"))
    assert [(line["invitation_id"], line["recipient"]) for line in lines] == [
        (ids[a], addresses.recipient_id(hashes[a])) for a in ("ann@example.com", "bob@example.com")
    ]
    assert all(line["campaign_id"] == 1 and line["client_id"] == "acme" for line in lines)
    # The log never shows a reference (nor, by private_logs, an address).
    text = orjson.dumps(logs, default=str).decode()
    assert not any(ref in text for ref in refs.values())


async def test_unknown_refs_and_refs_of_another_shape_are_reported(
    pg: asyncpg.Pool,
    hook_settings: Settings,
    smtp: tuple[RecordingHandler, int],
    app: httpx.AsyncClient,
) -> None:
    refs = await sent_campaign(pg, hook_settings, smtp[0], *PEOPLE)
    ann = refs["ann@example.com"]
    odd = [STRANGER, "hello", ann + "A", ann[:-1], ann.lower() if ann.lower() != ann else "x"]
    response = await post(app, {"refs": [odd[0], ann, *odd[1:], ann, "\u00e9" * 16]})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "completed": 1,
        "already_completed": 0,
        "unknown": [*odd, "\u00e9" * 16],
    }
    only_unknown = await post(app, {"ref": STRANGER})
    assert only_unknown.json() == {"completed": 0, "already_completed": 0, "unknown": [STRANGER]}


async def test_a_forged_or_unsigned_request_is_refused_and_records_nothing(
    pg: asyncpg.Pool,
    hook_settings: Settings,
    smtp: tuple[RecordingHandler, int],
    app: httpx.AsyncClient,
) -> None:
    refs = await sent_campaign(pg, hook_settings, smtp[0], *PEOPLE)
    body = orjson.dumps({"ref": refs["ann@example.com"]})
    other_body = orjson.dumps({"ref": refs["bob@example.com"]})
    forged = [
        signed(body, key=hashlib.sha256(b"a guess").digest()),
        # A genuine signature of another body.
        signed(other_body),
        {k: v for k, v in signed(body).items() if k != "webhook-signature"},
        {k: v for k, v in signed(body).items() if k != "webhook-id"},
        {**signed(body), "webhook-signature": "v1,"},
    ]
    for headers in forged:
        response = await app.post("/webhooks/completion", content=body, headers=headers)
        assert response.status_code == 401, response.text
        assert "error" in response.json()
    assert await nothing_recorded(pg)


@pytest.mark.parametrize("skew", [-301, 301, -3600])
async def test_a_stale_or_future_timestamp_is_refused(
    pg: asyncpg.Pool,
    hook_settings: Settings,
    smtp: tuple[RecordingHandler, int],
    app: httpx.AsyncClient,
    skew: int,
) -> None:
    refs = await sent_campaign(pg, hook_settings, smtp[0], "ann@example.com")
    body = orjson.dumps({"ref": refs["ann@example.com"]})
    headers = signed(body, timestamp=int(time.time()) + skew)
    response = await app.post("/webhooks/completion", content=body, headers=headers)
    assert response.status_code == 401
    assert "timestamp" in response.json()["error"]
    assert await nothing_recorded(pg)


async def test_a_replayed_webhook_id_counts_once(
    pg: asyncpg.Pool,
    hook_settings: Settings,
    smtp: tuple[RecordingHandler, int],
    app: httpx.AsyncClient,
) -> None:
    refs = await sent_campaign(pg, hook_settings, smtp[0], *PEOPLE)
    body = orjson.dumps({"ref": refs["ann@example.com"]})
    headers = signed(body, webhook_id="msg_once")
    first = await app.post("/webhooks/completion", content=body, headers=headers)
    replay = await app.post("/webhooks/completion", content=body, headers=headers)
    # The platform's retry: same id, a new timestamp and signature, even another body.
    other = orjson.dumps({"ref": refs["bob@example.com"]})
    retry = await app.post(
        "/webhooks/completion", content=other, headers=signed(other, webhook_id="msg_once")
    )
    assert first.json() == {"completed": 1, "already_completed": 0, "unknown": []}
    duplicate = {"completed": 0, "already_completed": 0, "unknown": [], "duplicate": True}
    assert replay.status_code == retry.status_code == 200
    assert replay.json() == retry.json() == duplicate
    state = await completed(pg)
    assert state["ann@example.com"] is not None and state["bob@example.com"] is None


async def test_concurrent_deliveries_complete_once(
    pg: asyncpg.Pool,
    hook_settings: Settings,
    smtp: tuple[RecordingHandler, int],
    app: httpx.AsyncClient,
) -> None:
    # Nothing is indexed yet: both requests find the campaign to index at once.
    refs = await sent_campaign(pg, hook_settings, smtp[0], *PEOPLE)
    answers = await asyncio.gather(
        *(post(app, {"refs": list(refs.values())}) for _ in range(4)),
        post(app, {"ref": refs["ann@example.com"]}, webhook_id="msg_same"),
        post(app, {"ref": refs["ann@example.com"]}, webhook_id="msg_same"),
    )
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert sum(a.json()["completed"] for a in answers) == 3
    assert sum(bool(a.json().get("duplicate")) for a in answers) == 1
    assert await pg.fetchval("SELECT count(*) FROM survey_refs") == 3


async def test_a_request_that_waits_for_another_ones_indexing_finds_its_refs(
    pg: asyncpg.Pool,
    hook_settings: Settings,
    smtp: tuple[RecordingHandler, int],
    app: httpx.AsyncClient,
) -> None:
    refs = await sent_campaign(pg, hook_settings, smtp[0], *PEOPLE)
    async with pg.acquire() as other:
        # Another request has claimed the campaign and is still indexing it.
        indexing = other.transaction()
        await indexing.start()
        await completion.index_refs(other, hash_key=hook_settings.hash_key())
        answer = asyncio.create_task(post(app, {"refs": list(refs.values())}))

        async def waits_for_the_claim() -> bool:
            return bool(
                await pg.fetchval(
                    """SELECT count(*) FROM pg_stat_activity
                       WHERE datname = current_database() AND wait_event_type = 'Lock'"""
                )
            )

        await wait_until(waits_for_the_claim, what="the request to wait for the claim")
        await indexing.commit()
    # It indexed nothing itself, and still found all three.
    assert (await answer).json() == {"completed": 3, "already_completed": 0, "unknown": []}


async def test_a_later_campaign_is_found_too(
    pg: asyncpg.Pool,
    hook_settings: Settings,
    smtp: tuple[RecordingHandler, int],
    app: httpx.AsyncClient,
) -> None:
    first = await sent_campaign(pg, hook_settings, smtp[0], "ann@example.com")
    assert (await post(app, {"ref": first["ann@example.com"]})).json()["completed"] == 1
    # The same person in a second campaign has another reference, indexed on demand.
    second = await sent_campaign(pg, hook_settings, smtp[0], "ann@example.com", "bob@example.com")
    assert second["ann@example.com"] != first["ann@example.com"]
    answer = await post(app, {"refs": [second["bob@example.com"], first["ann@example.com"]]})
    assert answer.json() == {"completed": 1, "already_completed": 1, "unknown": []}
    rows = await pg.fetch(
        "SELECT campaign_id, email FROM invitations WHERE completed_at IS NOT NULL ORDER BY 1, 2"
    )
    assert [tuple(r) for r in rows] == [(1, "ann@example.com"), (2, "bob@example.com")]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"[]",
        b'{"refs": "abc"}',
        b'{"refs": []}',
        b'{"ref": 42}',
        b'{"ref": "a", "refs": ["b"]}',
        b'{"refs": [null]}',
        b'{"reference": "AAAAAAAAAAAAAAAA"}',
        orjson.dumps({"refs": ["AAAAAAAAAAAAAAAA"] * (completion.MAX_REFS + 1)}),
    ],
)
async def test_a_malformed_body_is_400_with_a_reason(
    pg: asyncpg.Pool, app: httpx.AsyncClient, body: bytes
) -> None:
    response = await app.post("/webhooks/completion", content=body, headers=signed(body))
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]
    assert await nothing_recorded(pg)


async def test_a_body_over_the_cap_is_413(pg: asyncpg.Pool, app: httpx.AsyncClient) -> None:
    body = b'{"refs": ["' + b"A" * completion.MAX_BODY + b'"]}'
    declared = await app.post("/webhooks/completion", content=body, headers=signed(body))

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    # Without a Content-Length (chunked), the body is read no further than the cap.
    streamed = await app.post("/webhooks/completion", content=chunks(), headers=signed(body))
    assert declared.status_code == streamed.status_code == 413
    assert streamed.json() == {"error": "the body is too large"}
    assert await nothing_recorded(pg)


async def test_without_a_secret_the_endpoint_does_not_exist(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    body = orjson.dumps({"ref": STRANGER})
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as client:
        response = await client.post("/webhooks/completion", content=body, headers=signed(body))
    assert response.status_code == 404
    assert await nothing_recorded(pg)


async def test_postgres_down_is_503_and_the_retry_is_not_a_replay(
    pg: asyncpg.Pool,
    hook_settings: Settings,
    smtp: tuple[RecordingHandler, int],
    logs: list[dict[str, Any]],
) -> None:
    refs = await sent_campaign(pg, hook_settings, smtp[0], "ann@example.com")
    body = orjson.dumps({"ref": refs["ann@example.com"]})
    nowhere = f"postgresql://survey@127.0.0.1:{free_port()}/survey"
    async with (
        serving(hook_settings, database_url=nowhere) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        down = await client.post(
            "/webhooks/completion", content=body, headers=signed(body, webhook_id="msg_1")
        )
    assert down.status_code == 503
    assert down.headers["retry-after"] == "60"
    assert await nothing_recorded(pg)
    assert any(line["event"] == "completion.unavailable" for line in logs)
    async with serving(hook_settings) as base, httpx.AsyncClient(base_url=base) as client:
        again = await client.post(
            "/webhooks/completion", content=body, headers=signed(body, webhook_id="msg_1")
        )
    assert again.json() == {"completed": 1, "already_completed": 0, "unknown": []}


async def test_purged_invitations_are_unknown(
    pg: asyncpg.Pool,
    hook_settings: Settings,
    smtp: tuple[RecordingHandler, int],
    app: httpx.AsyncClient,
) -> None:
    refs = await sent_campaign(pg, hook_settings, smtp[0], *PEOPLE)
    assert (await post(app, {"ref": refs["ann@example.com"]})).json()["completed"] == 1
    await pg.execute("UPDATE campaigns SET completed_at = now() - interval '400 days'")
    async with pg.acquire() as conn:
        assert (await privacy.purge(conn, retention_days=365)).invitations == 3
    assert await pg.fetchval("SELECT count(*) FROM survey_refs") == 0
    answer = await post(app, {"refs": [refs["ann@example.com"], refs["bob@example.com"]]})
    assert answer.json()["unknown"] == [refs["ann@example.com"], refs["bob@example.com"]]


async def test_a_completion_by_webhook_stops_that_persons_reminders(
    pg: asyncpg.Pool,
    hook_settings: Settings,
    smtp: tuple[RecordingHandler, int],
    app: httpx.AsyncClient,
) -> None:
    handler = smtp[0]
    await add_client(pg, "acme")
    await launch(
        pg, hook_settings, csv_of(*PEOPLE), reminders=1, reminder_interval=timedelta(seconds=1)
    )
    await run_workers(hook_settings)
    first = {m.recipients[0]: ref_in(m) for m in handler.messages}
    answer = await post(app, {"ref": first["ann@example.com"]})
    assert answer.json()["completed"] == 1

    async def round_done() -> bool:
        # Each burst worker starts with a reconcile, which creates the rounds due.
        await run_workers(hook_settings)
        return bool(
            await pg.fetchval(
                "SELECT count(*) = 2 FROM invitations WHERE round = 1 AND state = 'sent'"
            )
        )

    await wait_until(round_done, timeout=30, what="round 1")
    reminders = {m.recipients[0]: ref_in(m) for m in handler.messages[len(PEOPLE) :]}
    assert sorted(reminders) == ["bob@example.com", "cat@example.com"]
    # A reminder's link names the first invitation: answering from it completes that one.
    assert reminders["bob@example.com"] == first["bob@example.com"]
    answer = await post(app, {"refs": [reminders["bob@example.com"], first["ann@example.com"]]})
    assert answer.json() == {"completed": 1, "already_completed": 1, "unknown": []}
    rows = await pg.fetch(
        "SELECT email FROM invitations WHERE completed_at IS NOT NULL AND round = 0 ORDER BY 1"
    )
    assert [r["email"] for r in rows] == ["ann@example.com", "bob@example.com"]
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM invitations WHERE round = 1 AND completed_at IS NOT NULL"
        )
        == 0
    )


# --- Roles ---------------------------------------------------------------------------------


@pytest.fixture
async def login(database_url: str) -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """Make login users in a group role, as the README tells operators; yields
    `create(role) -> the database URL of a new user in that role`."""
    admin = await asyncpg.connect(database_url)
    made: list[str] = []

    async def create(role: str) -> str:
        user = f"t_{role}_{uuid.uuid4().hex[:8]}"
        await admin.execute(f"CREATE ROLE {user} LOGIN IN ROLE {role}")
        made.append(user)
        scheme, _, rest = database_url.partition("://")
        return f"{scheme}://{user}@{rest.partition('@')[2]}"

    try:
        yield create
    finally:
        for user in made:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", user
            )
            await admin.execute(f"DROP ROLE IF EXISTS {user}")
        await admin.close()


async def test_the_web_role_completes_with_its_grants_alone(
    pg: asyncpg.Pool,
    hook_settings: Settings,
    smtp: tuple[RecordingHandler, int],
    login: Callable[[str], Awaitable[str]],
) -> None:
    refs = await sent_campaign(pg, hook_settings, smtp[0], *PEOPLE)
    web_login = await login("survey_web")
    async with (
        serving(hook_settings, database_url=web_login) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        answer = await post(client, {"refs": [refs["ann@example.com"], STRANGER]})
        again = await post(client, {"ref": refs["ann@example.com"]})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"completed": 1, "already_completed": 0, "unknown": [STRANGER]}
    assert again.json() == {"completed": 0, "already_completed": 1, "unknown": []}
    # completed_at is all the web role may change of an invitation.
    web = await db.create_pool(web_login, max_size=1)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await web.execute("UPDATE invitations SET state = 'pending'")
    finally:
        await web.close()


async def test_the_worker_role_completes_and_purges_with_its_grants_alone(
    pg: asyncpg.Pool,
    settings: Settings,
    smtp: tuple[RecordingHandler, int],
    login: Callable[[str], Awaitable[str]],
) -> None:
    refs = await sent_campaign(pg, settings, smtp[0], *PEOPLE)
    worker_login = await login("survey_worker")
    done = await cli(
        settings, "complete", refs["ann@example.com"], env={"DATABASE_URL": worker_login}
    )
    assert done.code == 0, done.stderr
    assert done.stdout.startswith("1 completed")
    # Retention's purge deletes invitations as the worker (worker/privacy.py).
    purge = await asyncpg.connect(worker_login)
    try:
        assert await purge.execute("DELETE FROM invitations WHERE campaign_id = 1") == "DELETE 3"
    finally:
        await purge.close()
    # Their references went with them.
    assert await pg.fetchval("SELECT count(*) FROM survey_refs") == 0


# --- The command line ----------------------------------------------------------------------


async def test_complete_takes_refs_as_arguments(
    pg: asyncpg.Pool, settings: Settings, smtp: tuple[RecordingHandler, int]
) -> None:
    refs = await sent_campaign(pg, settings, smtp[0], *PEOPLE)
    ann, bob = refs["ann@example.com"], refs["bob@example.com"]
    result = await cli(settings, "complete", ann, bob, STRANGER, "--json")
    assert result.code == 0, result.stderr
    assert orjson.loads(result.stdout) == {
        "completed": 2,
        "already_completed": 0,
        "unknown": [STRANGER],
        "rejected": [],
    }
    again = await cli(settings, "complete", ann)
    assert again.code == 0, again.stderr
    assert again.stdout == "0 completed, 1 already completed, 0 unknown\n"
    status = await cli(settings, "status", "1")
    assert "  completed (answered): 2" in status.stdout.splitlines()
    events = [line["event"] for line in result.log_lines()]
    assert events.count("invitation.completed") == 2
    assert_private(result.stderr)
    assert ann not in result.stderr and bob not in result.stderr


async def test_complete_reads_a_file_and_reports_bad_lines_by_number(
    pg: asyncpg.Pool, settings: Settings, smtp: tuple[RecordingHandler, int], tmp_path: Path
) -> None:
    refs = await sent_campaign(pg, settings, smtp[0], *PEOPLE)
    ann, bob = refs["ann@example.com"], refs["bob@example.com"]
    listing = tmp_path / "answered.txt"
    listing.write_bytes(
        b"\n".join(
            [
                ann.encode(),
                b"",
                b"   ",
                f"  {bob}\r".encode(),
                b"not a reference",
                b"\xff\xfe" + ann[2:].encode(),
                STRANGER.encode(),
                ann.encode(),
                b"",
            ]
        )
    )
    result = await cli(settings, "complete", "--file", str(listing), "--json")
    assert result.code == 0, result.stderr
    assert orjson.loads(result.stdout) == {
        "completed": 2,
        "already_completed": 0,
        "unknown": [STRANGER],
        "rejected": [
            {"line": 5, "reason": "not a survey reference"},
            {"line": 6, "reason": "not UTF-8"},
        ],
    }
    text = await cli(settings, "complete", "--file", str(listing))
    assert text.code == 0, text.stderr
    assert text.stdout.splitlines() == [
        "0 completed, 2 already completed, 1 unknown",
        f"  unknown: {STRANGER}",
        "  line 5: not a survey reference",
        "  line 6: not UTF-8",
    ]


async def test_complete_refuses_bad_usage_in_one_line(settings: Settings, tmp_path: Path) -> None:
    missing = await cli(settings, "complete", "--file", str(tmp_path / "nope.txt"))
    nothing = await cli(settings, "complete")
    for result in (missing, nothing):
        assert result.code == 1
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
    assert "nope.txt" in missing.stderr
    assert "REF" in nothing.stderr


async def test_complete_with_no_reference_read_is_an_error(
    pg: asyncpg.Pool, settings: Settings, smtp: tuple[RecordingHandler, int], tmp_path: Path
) -> None:
    refs = await sent_campaign(pg, settings, smtp[0], *PEOPLE)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"not a reference\n\n")
    empty = await cli(settings, "complete", "")
    devnull = await cli(settings, "complete", "--file", "/dev/null")
    rejected = await cli(settings, "complete", "--file", str(bad), "--json")
    blank_and_good = await cli(settings, "complete", refs["ann@example.com"], " ")
    for result in (empty, devnull, rejected, blank_and_good):
        assert result.code == 1, result.stderr
        assert result.stdout == ""
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert empty.stderr.strip() == "Error: a REF is empty; nothing was recorded"
    assert devnull.stderr.strip() == "Error: no survey reference in /dev/null"
    assert rejected.stderr.strip() == (
        f"Error: no survey reference in {bad}; line 1: not a survey reference"
    )
    # Nothing was recorded by the command that also held a blank REF.
    assert await pg.fetchval("SELECT count(*) FROM invitations WHERE completed_at IS NOT NULL") == 0


# --- The installed command, configured from the environment --------------------------------


async def test_survey_worker_web_serves_completion_with_the_secret_from_the_environment(
    pg: asyncpg.Pool, settings: Settings, smtp: tuple[RecordingHandler, int]
) -> None:
    refs = await sent_campaign(pg, settings, smtp[0], "ann@example.com")
    port = free_port()
    process = await start_cli(
        settings, "web", "--port", str(port), env={"COMPLETION_WEBHOOK_SECRET": SECRET}
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def up() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(up, timeout=30, what="survey-worker web")
            answer = await post(client, {"ref": refs["ann@example.com"]})
    finally:
        process.terminate()
        stdout, stderr = await process.communicate()
    assert answer.json() == {"completed": 1, "already_completed": 0, "unknown": []}
    output = stdout.decode() + stderr.decode()
    assert '"invitation.completed"' in output
    assert SECRET.removeprefix("whsec_") not in output
    assert refs["ann@example.com"] not in output
    assert_private(output)


@pytest.mark.parametrize(
    "value", ["my-plain-secret-0123456789", "whsec_***not-base64***", "whsec_c2hvcnQ="]
)
async def test_a_bad_secret_is_refused_by_every_command(settings: Settings, value: str) -> None:
    result = await cli(settings, "status", "1", env={"COMPLETION_WEBHOOK_SECRET": value})
    assert result.code == 1
    assert result.stderr.startswith("Error: COMPLETION_WEBHOOK_SECRET: ")
    assert value.removeprefix("whsec_") not in result.stderr
