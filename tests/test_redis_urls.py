"""Redis URLs as operators write them, against real servers this test starts (Debian's
`redis-server`): a password with URL-reserved characters, percent-encoded; an ACL user;
Sentinels in front of the primary; and Sentinel settings that cannot work."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest
import trustme

from tests.faults.harness import wait_until
from tests.support.campaign_cli import add_and_launch
from tests.support.commands import running
from tests.support.pipeline import csv_of, received_by
from tests.support.redis_servers import BINARY, redis_server, sentinel
from tests.support.smtp import RecordingHandler
from tests.support.web import cli, launch_args
from worker import redis_url
from worker.dev.embedded import free_port
from worker.settings import Settings

pytestmark = pytest.mark.skipif(not BINARY.exists(), reason="Debian's redis-server is missing")

# What Azure and key generators hand out: every character URLs reserve.
PASSWORD = "p/w:d@x+=y"
USER, USER_PASSWORD = "survey_app", "s3/cr:t@k+=="
PEOPLE = ["ann@example.com", "bob@example.com", "cat@example.com"]
MASTER = "survey"
SENTINEL_PASSWORD = "sentinel/p@ss:word+="


def test_user_and_password_are_percent_decoded() -> None:
    url = f"rediss://{USER}:{quote(USER_PASSWORD, safe='')}@cache.internal:6380/2"
    target = redis_url.parse(url + "?ca_file=/etc/ca.pem")
    assert (target.username, target.password) == (USER, USER_PASSWORD)
    assert (target.host, target.port, target.database, target.tls) == (
        "cache.internal",
        6380,
        2,
        True,
    )
    assert str(target.ca_file) == "/etc/ca.pem"


async def launch_and_send(settings: Settings, env: dict[str, str], tmp_path: Path) -> None:
    """`client add`, `launch`, `worker --burst`, `status` and `health` with `env`."""
    campaign_id = await add_and_launch(settings, PEOPLE, tmp_path, env=env)
    ran = await cli(settings, "worker", "--burst", env=env)
    assert ran.code == 0, ran.stderr
    shown = await cli(settings, "status", str(campaign_id), "--json", env=env)
    assert json.loads(shown.stdout)["status"] == "completed", shown.stdout
    # A running worker's heartbeat, read by `health` through the same settings.
    async with running(settings, "worker", env=env):

        async def healthy() -> bool:
            answer = await cli(settings, "health", env=env)
            assert answer.code == 0 or answer.stdout.startswith("unhealthy"), answer.stderr
            return answer.code == 0

        await wait_until(healthy, timeout=30, what="health to see the worker")


@pytest.mark.parametrize("login", ["password", "acl user"])
async def test_a_password_with_reserved_characters_works_percent_encoded(
    login: str, settings: Settings, smtp: tuple[RecordingHandler, int], tmp_path: Path
) -> None:
    with redis_server(tmp_path / "redis", password=PASSWORD, users=[(USER, USER_PASSWORD)]) as port:
        if login == "password":
            url = f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/0"
        else:
            url = f"redis://{USER}:{quote(USER_PASSWORD, safe='')}@127.0.0.1:{port}/0"
        await launch_and_send(settings, {"REDIS_URL": url}, tmp_path)
    assert received_by(smtp[0].messages) == {person: 1 for person in PEOPLE}


async def test_rediss_checks_the_server_against_redis_ca_file(
    settings: Settings, smtp: tuple[RecordingHandler, int], tmp_path: Path
) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    chain, key, ca_file = tmp_path / "chain.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    certificate.private_key_pem.write_to_path(str(key))
    certificate.cert_chain_pems[0].write_to_path(str(chain))
    authority.cert_pem.write_to_path(str(ca_file))
    with redis_server(tmp_path / "redis", password=PASSWORD, tls=(chain, key)) as port:
        url = f"rediss://:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/0"
        # Not signed by a CA the system trusts: refused without REDIS_CA_FILE.
        refused = await cli(settings, "worker", "--burst", env={"REDIS_URL": url})
        assert refused.code == 1 and "REDIS_URL" in refused.stderr, refused.stderr
        assert "certificate" in refused.stderr, refused.stderr
        await launch_and_send(settings, {"REDIS_URL": url, "REDIS_CA_FILE": str(ca_file)}, tmp_path)
    assert received_by(smtp[0].messages) == {person: 1 for person in PEOPLE}


@contextmanager
def primary_and_sentinel(folder: Path) -> Iterator[tuple[int, int]]:
    """A primary with PASSWORD and a Sentinel with SENTINEL_PASSWORD watching it as
    MASTER: (primary's port, Sentinel's port)."""
    with (
        redis_server(folder / "primary", password=PASSWORD) as port,
        sentinel(
            folder / "sentinel",
            master_port=port,
            master=MASTER,
            auth=PASSWORD,
            password=SENTINEL_PASSWORD,
        ) as sentinel_port,
    ):
        yield port, sentinel_port


async def test_commands_and_the_worker_find_the_primary_through_sentinels(
    settings: Settings, smtp: tuple[RecordingHandler, int], tmp_path: Path
) -> None:
    with primary_and_sentinel(tmp_path) as (_, sentinel_port):
        env = {
            # The host is replaced by the primary the Sentinels name.
            "REDIS_URL": f"redis://:{quote(PASSWORD, safe='')}@nowhere.invalid:1/0",
            # The first Sentinel is down: the others make up for it.
            "REDIS_SENTINELS": f"127.0.0.1:{free_port()},127.0.0.1:{sentinel_port}",
            "REDIS_SENTINEL_MASTER": MASTER,
            "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        }
        await launch_and_send(settings, env, tmp_path)
    assert received_by(smtp[0].messages) == {person: 1 for person in PEOPLE}


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"REDIS_SENTINELS": "127.0.0.1:26379,127.0.0.1:notaport"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "127.0.0.1:99999"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINEL_MASTER": "no-such-primary"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINEL_PASSWORD": "wrong"}, "REDIS_SENTINEL_PASSWORD"),
        ({"REDIS_SENTINEL_PASSWORD": None}, "REDIS_SENTINEL_PASSWORD"),
        ({"REDIS_SENTINEL_MASTER": None}, "REDIS_SENTINEL_MASTER"),
    ],
)
async def test_sentinel_settings_that_cannot_work_are_one_line_and_nothing_is_written(
    overrides: dict[str, str | None],
    named: str,
    settings: Settings,
    pg: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    with primary_and_sentinel(tmp_path) as (port, sentinel_port):
        env: dict[str, str | None] = {
            "REDIS_URL": f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/0",
            "REDIS_SENTINELS": f"127.0.0.1:{sentinel_port}",
            "REDIS_SENTINEL_MASTER": MASTER,
            "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
            **overrides,
        }
        added = await cli(
            settings, "client", "add", "acme", "--name", "Acme", "--sender", "s@acme.example"
        )
        assert added.code == 0, added.stderr
        recipients = tmp_path / "people.csv"
        recipients.write_text(csv_of(*PEOPLE))
        for args in (launch_args(recipients), ["worker", "--burst"], ["health"]):
            refused = await cli(settings, *args, env=env)
            lines = refused.stderr.strip().splitlines()
            assert refused.code == 1 and len(lines) == 1, refused.stderr
            assert named in lines[0], lines[0]
            for secret in (PASSWORD, quote(PASSWORD, safe=""), SENTINEL_PASSWORD, "wrong"):
                assert secret not in refused.stderr
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 0
    assert await pg.fetchval("SELECT count(*) FROM invitations") == 0
