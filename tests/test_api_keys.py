"""`survey-worker client key create|list|revoke` with the installed command, and the keys
they make on the real web app."""

from __future__ import annotations

import hashlib
import json

import asyncpg
import httpx

from tests.support.pipeline import add_client
from tests.support.web import cli, serving
from worker.settings import Settings


async def test_a_key_is_printed_once_as_the_last_word_and_stored_as_a_hash(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    await add_client(pg, "acme")
    made = await cli(settings, "client", "key", "create", "acme", "--name", "platform")
    assert made.code == 0, made.stderr
    key = made.stdout.split()[-1]
    assert key.startswith("swk_") and len(key) == 47
    as_json = await cli(settings, "client", "key", "create", "acme", "--json")
    answer = json.loads(as_json.stdout)
    assert set(answer) == {"key_id", "key"} and answer["key"] != key
    rows = await pg.fetch("SELECT id, name, key_hash FROM api_keys ORDER BY id")
    assert [r["key_hash"] for r in rows] == [
        hashlib.sha256(k.encode()).digest() for k in (key, answer["key"])
    ]
    # The key itself is nowhere in the database, nor in any log line.
    dump = str([dict(r) for r in await pg.fetch("SELECT * FROM api_keys")])
    assert key not in dump and key not in made.stderr
    assert rows[0]["name"] == "platform" and answer["key_id"] == rows[1]["id"]


async def test_list_and_revoke_rotate_a_key(pg: asyncpg.Pool, settings: Settings) -> None:
    await add_client(pg, "acme")
    old = json.loads((await cli(settings, "client", "key", "create", "acme", "--json")).stdout)
    new = json.loads(
        (await cli(settings, "client", "key", "create", "acme", "--name", "v2", "--json")).stdout
    )
    async with serving(settings) as base, httpx.AsyncClient(base_url=base) as http:
        auth = {"Authorization": f"Bearer {old['key']}"}
        assert (await http.get("/v1/opt-outs", headers=auth)).status_code == 200
        listed = await cli(settings, "client", "key", "list", "acme", "--json")
        keys = json.loads(listed.stdout)["keys"]
        assert [k["key_id"] for k in keys] == [old["key_id"], new["key_id"]]
        assert keys[0]["last_used_at"] is not None and keys[1]["last_used_at"] is None
        assert all(old["key"] not in listed.stdout for _ in keys)
        revoked = await cli(settings, "client", "key", "revoke", str(old["key_id"]))
        again = await cli(settings, "client", "key", "revoke", str(old["key_id"]))
        assert revoked.stdout.strip() == f"key {old['key_id']} revoked"
        assert again.stdout.strip() == f"key {old['key_id']} was already revoked"
        assert (await http.get("/v1/opt-outs", headers=auth)).status_code == 401
        fresh = {"Authorization": f"Bearer {new['key']}"}
        assert (await http.get("/v1/opt-outs", headers=fresh)).status_code == 200
    text = await cli(settings, "client", "key", "list", "acme")
    assert "revoked" in text.stdout and "'v2'" in text.stdout


async def test_bad_input_is_one_line_and_exit_1(pg: asyncpg.Pool, settings: Settings) -> None:
    await add_client(pg, "acme")
    for args in (
        ["client", "key", "create", "nobody"],
        ["client", "key", "list", "nobody"],
        ["client", "key", "revoke", "999"],
        ["client", "key", "revoke", "abc"],
        ["client", "key", "create", "acme", "--name", "x" * 201],
        ["client", "key", "create", "acme", "--name", "two\nlines"],
    ):
        done = await cli(settings, *args)
        assert done.code == 1, args
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert done.stdout == ""
    assert await pg.fetchval("SELECT count(*) FROM api_keys") == 0
