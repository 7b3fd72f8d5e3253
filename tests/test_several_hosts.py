"""Workers on several hosts: each `survey-worker worker` runs in a network namespace of its
own (a host with its own address, `tests.support.netns`), and reaches one Postgres, one
Redis and one SMTP server at the machine's address on the bridge, never over loopback
(inside a namespace, 127.0.0.1 is the namespace's own). A campaign sent by all of them
reaches every recipient exactly once, and each host sends part of it: the SMTP server
sees each message come from a host's address, and each worker's decision lines count
exactly the messages that came from its host."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path

import asyncpg
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.faults.harness import wait_until
from tests.support.admin import admin, with_database
from tests.support.campaign_cli import add_and_launch
from tests.support.netns import Host, Network, hosts, unavailable
from tests.support.pipeline import received_by
from tests.support.settings import make_settings
from tests.support.smtp import RecordingHandler, start_smtp_server
from tests.support.web import ROOT, assert_private, cli, cli_environment
from worker.dev.embedded import EmbeddedPostgres, free_port, pg_bin, redis_server
from worker.settings import Settings

UNAVAILABLE = unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")

HOSTS = 3
PEOPLE = [f"person{n:03}@example.com" for n in range(300)]
# The installed command, as a host would run it.
SURVEY_WORKER = Path(sys.executable).with_name("survey-worker")


class PeerRecordingHandler(RecordingHandler):
    """Records, besides each accepted message, the address it came from (`peers[i]` for
    `messages[i]`)."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: list[str] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        status = await super().handle_DATA(server, session, envelope)
        if status.startswith("250"):
            self.peers.append(session.peer[0])
        return status


def _wait_redis(address: str, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Return once the Redis `process` accepts connections on `address`:`port`;
    RuntimeError with the end of its `log` if it stops first or does not listen in 60 s."""
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    said = log.read_text()[-2000:] if log.exists() else ""
    raise RuntimeError(f"Redis did not listen on {address}:{port}: {said}")


def _as(user: str | None, *argv: str, check: bool = True) -> None:
    """Run `argv` as `user` (with its own group and no other), or as ourselves for None."""
    subprocess.run(
        argv,
        check=check,
        capture_output=True,
        user=user,
        group=user,
        extra_groups=[] if user else None,
    )


@contextmanager
def postgres_on(network: Network) -> Iterator[str]:
    """The embedded Postgres binaries serving a new cluster on the bridge's address only,
    trusting the hosts' subnet; the URL of its `postgres` database."""
    folder = Path(tempfile.mkdtemp(prefix="survey-hosts-pg-"))
    # Postgres refuses root: as root it runs as the embedded server's system user.
    user = EmbeddedPostgres(folder).user
    if user is not None:
        shutil.chown(folder, user, user)
    pgdata, port = folder / "pgdata", free_port()
    pg_ctl = [str(pg_bin() / "pg_ctl"), "-D", str(pgdata)]
    options = f"-p {port} -c listen_addresses={network.address} -c unix_socket_directories=''"
    try:
        initdb = [str(pg_bin() / "initdb"), "-D", str(pgdata), "-U", "postgres"]
        _as(user, *initdb, "--auth=trust", "-E", "UTF8", "--locale=C")
        with (pgdata / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {network.subnet} trust\n")
        _as(user, *pg_ctl, "-l", str(folder / "server.log"), "-w", "-o", options, "start")
        yield f"postgresql://postgres@{network.address}:{port}/postgres"
    finally:
        _as(user, *pg_ctl, "-m", "immediate", "stop", check=False)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def redis_on(network: Network) -> Iterator[str]:
    """The embedded Redis binary serving on the bridge's address only; its URL."""
    folder = Path(tempfile.mkdtemp(prefix="survey-hosts-redis-"))
    port, log = free_port(), folder / "redis.log"
    process = subprocess.Popen(
        [
            str(redis_server()),
            *("--bind", network.address, "--port", str(port), "--dir", str(folder)),
            *("--logfile", str(log), "--save", "", "--appendonly", "no"),
        ]
    )
    try:
        _wait_redis(network.address, port, process, log)
        yield f"redis://{network.address}:{port}/0"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


@asynccontextmanager
async def worker_on(host: Host, settings: Settings, log: Path) -> AsyncIterator[Path]:
    """`survey-worker worker` on `host` for the block, its output in `log`. On leaving,
    SIGTERM must stop it with exit status 0, and its output must hold no address or token;
    a worker still running on an error is killed."""
    with log.open("wb") as file:
        process = await asyncio.create_subprocess_exec(
            *host.command(str(SURVEY_WORKER), "worker"),
            env=cli_environment(settings),
            cwd=ROOT,
            stdout=file,
            stderr=subprocess.STDOUT,
        )
    try:
        yield log
        # `ip netns exec` execs the command: the signal reaches the worker itself.
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
        output = await asyncio.to_thread(log.read_text)
        assert process.returncode == 0, output[-3000:]
        assert_private(output)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def sent_lines(log: Path) -> int:
    """How many `invitation.sent` decision lines a worker printed."""
    lines = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return sum(1 for line in lines if line.get("event") == "invitation.sent")


async def client_addresses(database_url: str) -> set[str]:
    """The addresses of the clients connected to the database right now."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT DISTINCT host(client_addr) AS a FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return {row["a"] for row in rows}


async def test_workers_on_three_hosts_send_a_campaign_exactly_once(tmp_path: Path) -> None:
    handler = PeerRecordingHandler()
    # Slow enough that no worker has sent the campaign before the others start claiming.
    handler.data_delay = 0.05
    with hosts(HOSTS) as network, postgres_on(network) as server, redis_on(network) as redis_url:
        await admin(server, "CREATE DATABASE survey")
        database_url = with_database(server, "survey")
        async with start_smtp_server(handler, hostname=network.address) as smtp_port:
            settings = make_settings(database_url, redis_url, network.address, smtp_port)
            migrated = await cli(settings, "migrate")
            assert migrated.code == 0, migrated.stderr
            addresses = {host.address for host in network.hosts}
            logs = {host.address: tmp_path / f"{host.name}.log" for host in network.hosts}
            async with AsyncExitStack() as workers:
                for host in network.hosts:
                    await workers.enter_async_context(worker_on(host, settings, logs[host.address]))

                async def all_connected() -> bool:
                    return addresses <= await client_addresses(database_url)

                await wait_until(all_connected, timeout=60, what="every host's worker")
                campaign_id = await add_and_launch(settings, PEOPLE, tmp_path)

                async def completed() -> bool:
                    shown = await cli(settings, "status", str(campaign_id), "--json")
                    assert shown.code == 0, shown.stderr
                    return bool(json.loads(shown.stdout)["status"] == "completed")

                await wait_until(completed, timeout=120, what="the campaign to complete")
                conn = await asyncpg.connect(database_url)
                try:
                    rows = await conn.fetch(
                        "SELECT state, count(*) AS n FROM invitations GROUP BY state"
                    )
                finally:
                    await conn.close()

    assert {row["state"]: row["n"] for row in rows} == {"sent": len(PEOPLE)}
    received = received_by(handler.messages)
    assert set(received) == set(PEOPLE)
    assert set(received.values()) == {1}, "an invitation was sent twice"
    # Every message came from a host's address, never over loopback, and from more than one.
    by_host = Counter(handler.peers)
    assert set(by_host) <= addresses, by_host
    assert len(by_host) > 1, f"one host sent everything: {by_host}"
    # Each worker logged a decision for exactly the messages its host delivered.
    assert {address: sent_lines(log) for address, log in logs.items()} == {
        address: by_host.get(address, 0) for address in addresses
    }
