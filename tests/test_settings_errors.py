"""Every setting is checked before anything is written: a malformed or unreachable one is one
line on stderr naming it and exit status 1, whatever the command (each run as a real process)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from pydantic import ValidationError

from tests.support.pipeline import add_client, csv_of, launch
from tests.support.web import CliResult, cli, launch_args
from worker.dev import embedded
from worker.settings import Settings

# In every URL below, so that a message quoting the URL is caught.
PASSWORD = "s3cret-pass"


def commands(tmp_path: Path) -> dict[str, list[str]]:
    """A run of each command that writes, reads or serves something."""
    recipients = tmp_path / "people.csv"
    recipients.write_text(csv_of("ann@example.com"))
    return {
        "migrate": ["migrate"],
        "worker": ["worker", "--burst"],
        "launch": launch_args(recipients),
        "status": ["status", "1"],
        "resume": ["resume", "1"],
        "resend-unknown": ["resend-unknown", "1"],
        "client add": ["client", "add", "initech", "--name", "I", "--sender", "s@initech.example"],
        "opt-out": ["opt-out", "ann@example.com", "--client", "acme"],
        "export-opt-outs": ["export-opt-outs", "--client", "acme"],
        "purge": ["purge"],
        "health": ["health"],
        "web": ["web", "--port", str(embedded.free_port())],
        "preview": ["preview", "--template", "invitation"],
        "demo": ["demo", "--output", str(tmp_path / "demo-mail")],
    }


async def run_all(
    settings: Settings, runs: dict[str, list[str]], env: dict[str, str | None]
) -> dict[str, CliResult]:
    # A command that does not refuse the setting may run on (web, worker): give up on it.
    results = await asyncio.gather(
        *(cli(settings, *args, env=env, timeout=30) for args in runs.values())
    )
    return dict(zip(runs, results, strict=True))


def assert_one_line_error(name: str, done: CliResult, start: str) -> None:
    assert done.code == 1, (name, done)
    assert done.stderr.startswith(start), (name, done.stderr)
    assert len(done.stderr.splitlines()) == 1, (name, done.stderr)
    assert done.stdout == "", (name, done.stdout)
    assert PASSWORD not in done.stderr


async def nothing_written(pg: asyncpg.Pool) -> None:
    assert await pg.fetchval("SELECT array_agg(id) FROM clients") == ["acme"]
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 0
    assert await pg.fetchval("SELECT count(*) FROM client_opt_outs") == 0


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("DATABASE_URL", "garbage", "not a postgresql:// URL"),
        (
            "DATABASE_URL",
            f"postgresql://survey:{PASSWORD}@db.internal:notaport/survey",
            "the port is not a number from 1 to 65535",
        ),
        ("REDIS_URL", "garbage", "not a redis://, rediss:// or unix:// URL"),
    ],
)
async def test_a_malformed_url_is_one_line_for_every_command(
    pg: asyncpg.Pool,
    settings: Settings,
    tmp_path: Path,
    variable: str,
    value: str,
    complaint: str,
) -> None:
    await add_client(pg, "acme")
    results = await run_all(settings, commands(tmp_path), {variable: value})
    for name, done in results.items():
        assert_one_line_error(name, done, f"Error: {variable}: {complaint}")
    await nothing_written(pg)


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("SMTP_PORT", "abc", "Input should be a valid integer"),
        ("SMTP_TLS", "bogus", "Input should be 'none', 'starttls' or 'tls'"),
        # (An empty SMTP_HOST= means unset, as any empty variable: the default, localhost.)
        ("SMTP_HOST", " ", "must be a host name or address"),
    ],
)
async def test_malformed_smtp_settings_are_one_line(
    pg: asyncpg.Pool,
    settings: Settings,
    tmp_path: Path,
    variable: str,
    value: str,
    complaint: str,
) -> None:
    await add_client(pg, "acme")
    runs = {k: v for k, v in commands(tmp_path).items() if k in ("worker", "demo", "launch", "web")}
    for name, done in (await run_all(settings, runs, {variable: value})).items():
        assert_one_line_error(name, done, f"Error: {variable}: {complaint}")
    await nothing_written(pg)


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        ("database_url", "mysql://db/x", "not a postgresql:// URL"),
        ("database_url", f"postgresql://u:{PASSWORD}@h:0/x", "the port is not a number"),
        ("database_url", "postgresql:///x?host=/run/pg&port=x", "the port is not a number"),
        # An unescaped '/' in a password: the "port" is the password's start, never quoted.
        ("database_url", f"postgresql://u:{PASSWORD}/x@h/x", "the port is not a number"),
        ("redis_url", "http://cache:6379", "not a redis://, rediss:// or unix:// URL"),
        ("redis_url", f"redis://:{PASSWORD}@cache:99999/0", "the port is not a number"),
        ("redis_url", "redis://cache:6379/zero", "the database is not a number"),
        ("redis_url", "unix://", "needs the socket's path"),
        ("smtp_port", "0", "greater than or equal to 1"),
        ("smtp_port", "65536", "less than or equal to 65535"),
        ("smtp_host", "mail relay", "must be a host name or address"),
    ],
)
def test_settings_refuse_malformed_values(field: str, value: str, complaint: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, **{field: value})  # type: ignore[call-arg]
    assert complaint in str(refused.value.errors()[0]["msg"])
    assert PASSWORD not in refused.value.errors()[0]["msg"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("database_url", "postgresql://h1:5432,h2:5433/survey?sslmode=require"),
        ("database_url", "postgres://[::1]:5432/survey"),
        ("database_url", "postgresql:///survey?host=/run/postgresql"),
        ("redis_url", "rediss://user:pw@cache:6380/2"),
        ("redis_url", "redis://cache?db=3"),
        ("redis_url", "unix:///run/redis.sock"),
    ],
)
def test_settings_accept_the_urls_asyncpg_and_arq_read(field: str, value: str) -> None:
    assert getattr(Settings(_env_file=None, **{field: value}), field) == value  # type: ignore[call-arg]


def test_a_blank_url_means_embedded() -> None:
    settings = Settings(_env_file=None, database_url=" ", redis_url="")  # type: ignore[call-arg]
    assert settings.database_url is None and settings.redis_url is None


async def test_an_unreachable_database_is_named_before_anything_is_written(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    await add_client(pg, "acme")
    port = embedded.free_port()
    url = f"postgresql://survey:{PASSWORD}@127.0.0.1:{port}/survey"
    # The web app starts while Postgres is down (it queues clicks); `health` reads Redis only.
    runs = {
        k: v for k, v in commands(tmp_path).items() if k not in ("web", "health", "preview", "demo")
    }
    for name, done in (await run_all(settings, runs, {"DATABASE_URL": url})).items():
        assert_one_line_error(
            name, done, f"Error: DATABASE_URL: cannot connect to Postgres at 127.0.0.1:{port}/"
        )
    await nothing_written(pg)


async def test_an_unreachable_redis_is_named_before_anything_is_written(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    await add_client(pg, "acme")
    paused = await launch(pg, settings, csv_of("bob@example.com"), enqueue=False)
    await pg.execute("UPDATE campaigns SET status = 'paused' WHERE id = $1", paused.campaign_id)
    await pg.execute("UPDATE invitations SET state = 'unknown'")
    port = embedded.free_port()
    runs = commands(tmp_path)
    runs["resume"] = ["resume", str(paused.campaign_id)]
    runs["resend-unknown"] = ["resend-unknown", str(paused.campaign_id)]
    uses_redis = {k: runs[k] for k in ("worker", "launch", "health", "resume", "resend-unknown")}
    env: dict[str, str | None] = {"REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{port}/0"}
    for name, done in (await run_all(settings, uses_redis, env)).items():
        assert_one_line_error(
            name, done, f"Error: REDIS_URL: cannot connect to Redis at 127.0.0.1:{port}/0:"
        )
    # launch checked Redis before importing anything; resume and resend-unknown changed nothing.
    assert await pg.fetchval("SELECT count(*) FROM campaigns") == 1
    assert await pg.fetchval("SELECT status FROM campaigns") == "paused"
    assert await pg.fetchval("SELECT state FROM invitations") == "unknown"
    # Commands that only read or write Postgres do not need Redis.
    status = await cli(settings, "status", str(paused.campaign_id), env=env)
    assert status.code == 0, status.stderr


async def test_the_worker_starts_with_the_smtp_relay_down_and_says_so(
    settings: Settings,
) -> None:
    port = embedded.free_port()
    done = await cli(settings, "worker", "--burst", env={"SMTP_PORT": str(port)})
    assert done.code == 0, done.stderr
    warning = next(line for line in done.stdout.splitlines() if "worker.smtp_unreachable" in line)
    assert f'"smtp_port":{port}' in warning


async def test_a_malformed_relay_url_is_one_line_for_every_command(
    pg: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    await add_client(pg, "acme")
    # An unescaped '/' in the password (it should be %2F): the URL's "port" is its start.
    env: dict[str, str | None] = {
        "SMTP_RELAYS": "ses",
        "SMTP_RELAY_SES_URL": f"smtp+starttls://AKIA:{PASSWORD}/x+y=@email-smtp.example.com",
    }
    for name, done in (await run_all(settings, commands(tmp_path), env)).items():
        assert_one_line_error(name, done, "Error: SMTP_RELAY_SES_URL: not a valid URL")
    await nothing_written(pg)


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        (
            {"SMTP_RELAYS": "main,back-up", "SMTP_RELAY_MAIN_URL": "smtp://relay.test"},
            "SMTP_RELAYS: 'back-up' is not a relay name (lower-case letters, digits and _)",
        ),
        ({"SMTP_RELAYS": "main"}, "SMTP_RELAY_MAIN_URL: must be set"),
        (
            {"SMTP_RELAYS": "main", "SMTP_RELAY_MAIN_URL": f"http://u:{PASSWORD}@relay.test"},
            "SMTP_RELAY_MAIN_URL: not an smtp://, smtp+starttls:// or smtps:// URL",
        ),
        (
            {
                "SMTP_RELAYS": "main",
                "SMTP_RELAY_MAIN_URL": "smtp://relay.test",
                "SMTP_RELAY_MAIN_WEIGHT": "-1",
            },
            "SMTP_RELAY_MAIN_WEIGHT: must be a whole number, 0 or more",
        ),
    ],
)
async def test_bad_relay_settings_are_one_line(
    pg: asyncpg.Pool,
    settings: Settings,
    tmp_path: Path,
    env: dict[str, str | None],
    complaint: str,
) -> None:
    await add_client(pg, "acme")
    runs = {k: v for k, v in commands(tmp_path).items() if k in ("worker", "demo", "launch", "web")}
    for name, done in (await run_all(settings, runs, env)).items():
        assert_one_line_error(name, done, f"Error: {complaint}")
    await nothing_written(pg)
