"""A private Postfix for tests: Debian's MTA as the relay between the worker and the world.

`postfix_relay(routes)` starts an instance of its own (configuration, queue, data and log
under one temporary folder, its SMTP server on a free loopback port), yields a `Postfix`,
and stops it and deletes the folder afterwards. It accepts mail for any domain from
127.0.0.1 and sends each domain where `routes` says: an aiosmtpd server
(`smtp:[127.0.0.1]:PORT`), or Postfix's error(8) agent, which turns the mail into a real
delivery status notification (RFC 3464) to the envelope sender, as an MTA on the Internet
would (`error:5.1.1 mailbox unknown` bounces at once, `retry:4.2.2 mailbox full` defers
until the queue lifetime runs out, then bounces with the 4.2.2 status).

    async with start_smtp_server(sink) as sink_port, start_smtp_server(bounces) as port:
        async with postfix_relay(relay_routes(sink_port=sink_port, bounce_port=port)) as mta:
            ...  # send to 127.0.0.1:mta.port

Postfix's master process runs as root (it gives its daemons to the `postfix` user that
Debian's package creates): tests skip, or fail in CI, when not root or without the package.
An exception raised inside the block carries the instance's log as a note.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.system import free_port, missing

# The transport of each test domain, as a real MTA would treat mail to it (see relay_routes).
HARD = "hard.example"
POLICY = "policy.example"
SOFT = "soft.example"
GOOD = "good.example"
BOUNCE_DOMAIN = "bounces.test"
# The instance's own name: in its Received headers and DSNs (Reporting-MTA).
HOSTNAME = "relay.test"

# Debian installs Postfix's commands in sbin, which is not on every user's PATH.
_SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


@dataclass(frozen=True)
class Postfix:
    """A running private Postfix: its SMTP server on 127.0.0.1:`port`."""

    port: int
    directory: Path

    @property
    def log_path(self) -> Path:
        return self.directory / "maillog"

    def log(self) -> str:
        """What the instance has logged so far (its maillog_file)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def relay_routes(
    *, sink_port: int, bounce_port: int, bounce_domain: str = BOUNCE_DOMAIN
) -> dict[str, str]:
    """The test domains' transports (transport(5) right-hand sides).

    hard.example bounces at once with 5.1.1 and policy.example with 5.7.1; soft.example
    is deferred with 4.2.2 until the queue lifetime runs out (error(8) would turn a 4.x.x
    code into 5.0.0: `retry` is the same agent deferring); good.example goes to the SMTP
    server on `sink_port`, and the bounce domain to the one on `bounce_port`.
    """
    return {
        HARD: "error:5.1.1 mailbox unknown",
        POLICY: "error:5.7.1 message refused by policy",
        SOFT: "retry:4.2.2 mailbox full",
        GOOD: f"smtp:[127.0.0.1]:{sink_port}",
        bounce_domain: f"smtp:[127.0.0.1]:{bounce_port}",
    }


@asynccontextmanager
async def postfix_relay(
    routes: Mapping[str, str], *, queue_lifetime: int = 2
) -> AsyncIterator[Postfix]:
    """Run a private Postfix that relays for 127.0.0.1 by `routes` (domain -> transport).

    Any other domain bounces (5.4.4). Deferred mail is retried every second, and returned
    to its sender as undeliverable after `queue_lifetime` seconds; DSNs that cannot be
    delivered are given up after as long. On leaving the block the instance stops and its
    folder is deleted; an exception from the block gets the instance's log as a note.
    """
    postfix = _postfix_command()
    directory = Path(tempfile.mkdtemp(prefix="survey-postfix-"))
    try:
        instance = _configure(directory, routes, queue_lifetime)
        config = str(directory / "etc")
        # `postfix start` checks the configuration, creates the queue's folders with their
        # owners (post-install), and returns once the master process listens.
        await _run(instance, postfix, "-c", config, "start")
        try:
            yield instance
        except BaseException as error:
            error.add_note(f"Log of the Postfix on port {instance.port}:\n{instance.log()}")
            raise
        finally:
            # Returns once the master process is gone (it sends its daemons SIGTERM).
            await _run(instance, postfix, "-c", config, "stop")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _configure(directory: Path, routes: Mapping[str, str], queue_lifetime: int) -> Postfix:
    """Write the instance's configuration under `directory`, with an empty queue folder."""
    # The daemons run as the `postfix` user and must reach the queue under this folder.
    directory.chmod(0o755)
    _check_searchable(directory)
    instance = Postfix(port=free_port(), directory=directory)
    config = directory / "etc"
    config.mkdir(mode=0o755)
    (directory / "queue").mkdir(mode=0o755)
    (config / "transport").write_text(
        "".join(f"{domain} {transport}\n" for domain, transport in routes.items())
    )
    (config / "main.cf").write_text(_main_cf(instance, queue_lifetime))
    (config / "master.cf").write_text(_master_cf(instance.port))
    # Postfix waits until a file it reads has not changed for a second (it may be
    # half-written): date the files back rather than wait.
    past = time.time() - 60
    for written in config.iterdir():
        os.utime(written, (past, past))
    return instance


def _postfix_command() -> str:
    found = shutil.which("postfix", path=_SBIN)
    if found is None:
        missing("Debian's postfix is not installed (apt-get install postfix)")
    if os.geteuid() != 0:
        missing("a private Postfix instance needs root (its master process runs as root)")
    return found


def _check_searchable(directory: Path) -> None:
    # The `postfix` user must be able to walk down to the queue (a TMPDIR under a private
    # home folder would not do).
    for folder in directory.parents:
        if folder.stat().st_mode & 0o001 == 0:
            raise RuntimeError(f"{folder} is closed to the postfix user: set TMPDIR elsewhere")


async def _run(instance: Postfix, *command: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with {process.returncode}:\n{output.decode()}\n"
            f"Postfix log:\n{instance.log()}"
        )


def _main_cf(instance: Postfix, queue_lifetime: int) -> str:
    """main.cf of a private instance: nothing shared with the system's Postfix or another
    test's, no DNS, no local delivery, short queue timings."""
    root = instance.directory
    settings = {
        # Debian's own main.cf sets 3.6: current defaults without compatibility warnings
        # (among them smtputf8_enable = yes).
        "compatibility_level": "3.6",
        # Everything of this instance's own under its folder: sockets, pid and lock files
        # live in the queue and data directories, so instances never meet.
        "config_directory": f"{root}/etc",
        "queue_directory": f"{root}/queue",
        "data_directory": f"{root}/data",
        "syslog_name": f"postfix-test-{instance.port}",
        # Log to a file (via postlogd) rather than to a syslog a container may not run.
        "maillog_file": str(instance.log_path),
        # maillog_file must start with one of these (default: /var, /dev/stdout).
        "maillog_file_prefixes": str(root),
        "myhostname": HOSTNAME,
        "mydomain": HOSTNAME,
        "myorigin": HOSTNAME,
        # Listen on loopback only (the port is in master.cf), and speak IPv4 only: a CI
        # container may have no IPv6 loopback.
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        # A relay, not a destination: no domain is local, nothing is delivered to a
        # mailbox, no aliases file is read.
        "mydestination": "",
        "local_recipient_maps": "",
        "local_transport": "error:5.1.1 this test relay delivers nothing locally",
        "alias_maps": "",
        "alias_database": "",
        "biff": "no",
        "mynetworks": "127.0.0.0/8",
        "smtpd_relay_restrictions": "permit_mynetworks, reject",
        # Accept mail to domains routed to error(8) rather than refusing it at RCPT, as a
        # provider's relay does: the bounce is a DSN, later.
        "smtpd_reject_unlisted_recipient": "no",
        "transport_maps": f"texthash:{root}/etc/transport",
        "default_transport": "error:5.4.4 this test relay has no route to that domain",
        # No DNS: every route names [127.0.0.1], and 127.0.0.1 is not looked up.
        "smtp_dns_support_level": "disabled",
        "smtpd_peername_lookup": "no",
        "smtp_tls_security_level": "none",
        "smtpd_tls_security_level": "none",
        # Retry every second and give up after queue_lifetime seconds, so a soft bounce
        # comes back within a test.
        "queue_run_delay": "1s",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "1s",
        "maximal_queue_lifetime": f"{queue_lifetime}s",
        "bounce_queue_lifetime": f"{queue_lifetime}s",
        "delay_warning_time": "0",
        # smtpd never waits for the queue manager to catch up.
        "in_flow_delay": "0",
        # No mail to the postmaster (who has no mailbox here) about bounces or trouble.
        "notify_classes": "",
    }
    return "".join(f"{name} = {value}\n" for name, value in settings.items())


def _master_cf(port: int) -> str:
    """master.cf: the SMTP server on 127.0.0.1:`port` and the internal services a relay
    uses, none of them chrooted (a chroot would need a copy of /etc and libraries)."""
    services = [
        # service type private unpriv chroot wakeup maxproc command
        f"127.0.0.1:{port} inet n - n - - smtpd",
        "cleanup unix n - n - 0 cleanup",
        "qmgr unix n - n 300 1 qmgr",
        "rewrite unix - - n - - trivial-rewrite",
        "bounce unix - - n - 0 bounce",
        "defer unix - - n - 0 bounce",
        "trace unix - - n - 0 bounce",
        "verify unix - - n - 1 verify",
        "flush unix n - n 1000? 0 flush",
        "proxymap unix - - n - - proxymap",
        "proxywrite unix - - n - 1 proxymap",
        "smtp unix - - n - - smtp",
        "relay unix - - n - - smtp",
        "showq unix n - n - - showq",
        "error unix - - n - - error",
        "retry unix - - n - - error",
        "discard unix - - n - - discard",
        "anvil unix - - n - 1 anvil",
        "scache unix - - n - 1 scache",
        "postlog unix-dgram n - n - 1 postlogd",
    ]
    return "".join(f"{line}\n" for line in services)
