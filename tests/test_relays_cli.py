"""`survey-worker check-relay`, the installed command with settings in its environment,
against real aiosmtpd relays the tests start: one line per relay, `ok` with the features
used or the trouble the worker would wait on, exit status 1 when any fails; bad relay
settings and unknown names are one `Error:` line. It needs no database and no Redis."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.smtp import RecordingHandler, start_smtp_server
from worker.dev import embedded

COMMAND = Path(sys.executable).parent / "survey-worker"
# A key as Azure or SES hand them out: '/', '+' and '=' are written %2F, %2B, %3D.
PASSWORD = "s3cret/key+of=="


@dataclass(frozen=True)
class Done:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """The command's folder: no `.env`; an embedded server would put its data here."""
    yield tmp_path
    assert not (tmp_path / ".data").exists(), "check-relay started an embedded server"


async def check_relay(workdir: Path, *args: str, env: dict[str, str]) -> Done:
    """Run `survey-worker check-relay ARGS` with only `env`'s relay settings."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "DATA_DIR"))}
    process = await asyncio.create_subprocess_exec(
        str(COMMAND),
        "check-relay",
        *args,
        env={**inherited, **env},
        cwd=workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Done(process.returncode, stdout.decode(), stderr.decode())


def relays(**urls: str) -> dict[str, str]:
    """SMTP_RELAYS naming `urls`' keys, each with its SMTP_RELAY_<NAME>_URL."""
    env = {"SMTP_RELAYS": ",".join(urls), "SMTP_TIMEOUT": "5"}
    env.update({f"SMTP_RELAY_{name.upper()}_URL": url for name, url in urls.items()})
    return env


def authenticator(password: str) -> Any:
    """An aiosmtpd authenticator that takes user `firm` with `password`."""

    def check(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"firm",
            password.encode(),
        )
        return AuthResult(success=ok, handled=False)

    return check


@contextmanager
def trusted_ca(folder: Path) -> Iterator[tuple[ssl.SSLContext, dict[str, str]]]:
    """A server TLS context with a certificate for 127.0.0.1 from a new CA, and the
    environment that makes the command trust that CA (OpenSSL honours SSL_CERT_FILE)."""
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    yield server_tls, {"SSL_CERT_FILE": str(ca_file)}


async def test_a_plain_relay_is_ok_and_gets_no_message(workdir: Path) -> None:
    handler = RecordingHandler()
    async with start_smtp_server(handler) as port:
        done = await check_relay(workdir, env=relays(main=f"smtp://127.0.0.1:{port}"))
    assert (done.code, done.stdout, done.stderr) == (0, "main: ok\n", "")
    assert handler.connections == 1
    assert handler.messages == []


async def test_without_smtp_relays_it_checks_the_default_relay(workdir: Path) -> None:
    async with start_smtp_server(RecordingHandler()) as port:
        env = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port), "SMTP_TLS": "none"}
        done = await check_relay(workdir, env=env)
    assert (done.code, done.stdout) == (0, "default: ok\n"), done.stderr


async def test_the_right_password_is_ok_and_a_wrong_one_is_auth_failed(workdir: Path) -> None:
    options = {"authenticator": authenticator(PASSWORD), "auth_require_tls": False}
    async with start_smtp_server(RecordingHandler(), **options) as port:
        right = await check_relay(
            workdir, env=relays(esp=f"smtp://firm:{quote(PASSWORD, safe='')}@127.0.0.1:{port}")
        )
        wrong = await check_relay(
            workdir, env=relays(esp=f"smtp://firm:not-{quote(PASSWORD, safe='')}@127.0.0.1:{port}")
        )
    assert (right.code, right.stdout) == (0, "esp: ok (AUTH PLAIN)\n"), right.stderr
    assert wrong.code == 1
    assert wrong.stdout == "esp: auth_failed: 535 5.7.8 Authentication credentials invalid\n"
    assert PASSWORD not in wrong.stdout + wrong.stderr


async def test_a_relay_that_wants_auth_at_mail_from_is_auth_failed(workdir: Path) -> None:
    # A relay that requires AUTH, configured without a user: 530 at MAIL FROM.
    handler = RecordingHandler()
    # aiosmtpd hands the null sender on as "<>".
    handler.on("<>", stage="MAIL", reply="530 5.7.0 Authentication required")
    async with start_smtp_server(handler) as port:
        done = await check_relay(workdir, env=relays(esp=f"smtp://127.0.0.1:{port}"))
    assert (done.code, done.stdout) == (1, "esp: auth_failed: 530 5.7.0 Authentication required\n")


async def test_starttls_with_a_trusted_certificate_is_ok(workdir: Path) -> None:
    with trusted_ca(workdir) as (server_tls, trust):
        options = {"tls_context": server_tls, "require_starttls": True}
        options["authenticator"] = authenticator(PASSWORD)
        async with start_smtp_server(RecordingHandler(), **options) as port:
            url = f"smtp+starttls://firm:{quote(PASSWORD, safe='')}@127.0.0.1:{port}"
            done = await check_relay(workdir, env={**relays(tls=url), **trust})
    assert (done.code, done.stdout) == (0, "tls: ok (STARTTLS, AUTH PLAIN)\n"), done.stderr


async def test_starttls_with_an_untrusted_certificate_is_tls_failed(workdir: Path) -> None:
    with trusted_ca(workdir) as (server_tls, _trust):
        options = {"tls_context": server_tls, "require_starttls": True}
        async with start_smtp_server(RecordingHandler(), **options) as port:
            done = await check_relay(workdir, env=relays(tls=f"smtp+starttls://127.0.0.1:{port}"))
    assert done.code == 1
    assert done.stdout.startswith("tls: tls_failed: SSLCertVerificationError: "), done.stdout
    assert "certificate verify failed" in done.stdout


async def test_starttls_not_offered_is_tls_failed_and_nothing_goes_in_plaintext(
    workdir: Path,
) -> None:
    handler = RecordingHandler()
    async with start_smtp_server(handler) as port:
        done = await check_relay(workdir, env=relays(tls=f"smtp+starttls://127.0.0.1:{port}"))
    assert (done.code, done.stdout) == (
        1,
        "tls: tls_failed: SMTPException: SMTP STARTTLS extension not supported by server.\n",
    )


async def test_a_port_with_nothing_listening_is_unreachable(workdir: Path) -> None:
    port = embedded.free_port()
    done = await check_relay(workdir, env=relays(gone=f"smtp://127.0.0.1:{port}"))
    assert done.code == 1
    assert done.stdout.startswith("gone: unreachable: ConnectionRefusedError: "), done.stdout
    assert done.stderr == ""


async def test_two_relays_one_bad_are_two_lines_and_exit_1(workdir: Path) -> None:
    port = embedded.free_port()
    async with start_smtp_server(RecordingHandler()) as good:
        env = relays(main=f"smtp://127.0.0.1:{good}", backup=f"smtp://127.0.0.1:{port}")
        done = await check_relay(workdir, env=env)
        only = await check_relay(workdir, "main", env=env)
        as_json = await check_relay(workdir, "backup", "main", "--json", env=env)
    assert done.code == 1
    first, second = done.stdout.splitlines()
    assert first == "main: ok"
    assert second.startswith("backup: unreachable: ConnectionRefusedError: ")
    assert (only.code, only.stdout) == (0, "main: ok\n")
    reports = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert as_json.code == 1
    assert [(r["relay"], r["ok"], r["reason"]) for r in reports] == [
        ("backup", False, "unreachable"),
        ("main", True, None),
    ]
    assert reports[0]["error"].startswith("ConnectionRefusedError: ")
    assert reports[1] == {
        "relay": "main",
        "ok": True,
        "features": [],
        "reason": None,
        "code": None,
        "status": None,
        "reply": None,
        "error": None,
    }


async def test_an_unknown_name_is_one_error_line(workdir: Path) -> None:
    env = relays(main="smtp://127.0.0.1", backup="smtp://127.0.0.1")
    done = await check_relay(workdir, "main", "spare", env=env)
    assert (done.code, done.stdout) == (1, "")
    assert done.stderr == "Error: no relay named spare (relays: main, backup)\n"


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        # An unescaped '/' in the password: the URL's "port" is the password's start.
        (relays(ses=f"smtp+starttls://AKIA:{PASSWORD}@email-smtp.test"), "not a valid URL"),
        (relays(ses=f"smtp+tls://AKIA:{quote(PASSWORD, safe='')}@h"), "not an smtp://"),
    ],
)
async def test_a_malformed_relay_url_is_one_error_line_without_the_url(
    workdir: Path, env: dict[str, str], complaint: str
) -> None:
    done = await check_relay(workdir, env=env)
    assert (done.code, done.stdout) == (1, "")
    assert done.stderr.startswith(f"Error: SMTP_RELAY_SES_URL: {complaint}")
    assert len(done.stderr.splitlines()) == 1
    assert "Traceback" not in done.stderr
    assert "s3cret" not in done.stderr and "AKIA" not in done.stderr


async def test_a_bad_relay_name_is_one_error_line(workdir: Path) -> None:
    done = await check_relay(workdir, env={"SMTP_RELAYS": "main,back-up"})
    assert (done.code, done.stdout) == (1, "")
    assert done.stderr == (
        "Error: SMTP_RELAYS: 'back-up' is not a relay name (lower-case letters, digits and _)\n"
    )
