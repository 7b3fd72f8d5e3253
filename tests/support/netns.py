"""Separate hosts on one machine: Linux network namespaces (`ip netns`, root only) joined
by a bridge that has an address of its own in a private subnet.

    with hosts(3) as network:
        ...  # servers listen on network.address (the bridge, e.g. 10.77.5.1)
        network.hosts[0].command("survey-worker", "worker")  # runs on 10.77.5.10

Each host is a namespace with `lo` up and one end of a veth pair, the other end in the
bridge; nothing but the subnet is routed, so a host reaches the machine's servers only at
the bridge's address. Everything is removed on leaving the block, also after a failure,
processes still running in a namespace included.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass

# The private subnets the bridge may take: 10.77.N.0/24, one not in use on the machine.
PREFIX = "10.77"


def unavailable() -> str | None:
    """Why namespaces cannot be made here (not root, no `ip netns`), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    ip = shutil.which("ip")
    if ip is None:
        return "the ip command (iproute2) is missing"
    listed = subprocess.run([ip, "netns", "list"], capture_output=True, text=True, check=False)
    if listed.returncode != 0:
        return f"ip netns is unavailable: {listed.stderr.strip()}"
    return None


@dataclass(frozen=True)
class Host:
    """One network namespace, `name`, reachable at `address`."""

    name: str
    address: str

    def command(self, *argv: str) -> list[str]:
        """`argv` run inside this host's namespace (the environment passes through)."""
        return ["ip", "netns", "exec", self.name, *argv]


@dataclass(frozen=True)
class Network:
    """The bridge's `address` (the machine as the hosts see it) and the hosts."""

    address: str
    subnet: str
    hosts: tuple[Host, ...]


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _free_subnet() -> str:
    """A 10.77.N prefix no address of the machine is in (at random among those, so that
    two test runs at once rarely pick the same one)."""
    shown = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    free = [n for n in range(1, 255) if f" {PREFIX}.{n}." not in shown]
    if not free:
        raise RuntimeError(f"every {PREFIX}.N.0/24 subnet is in use")
    return f"{PREFIX}.{random.choice(free)}"


def _delete_link(name: str) -> None:
    subprocess.run(["ip", "link", "delete", name], capture_output=True, check=False)


def _remove_namespace(name: str) -> None:
    """Kill what still runs in namespace `name` (what this module's caller started there),
    then delete it with its veth pair."""
    pids = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


@contextmanager
def hosts(count: int) -> Iterator[Network]:
    """`count` hosts on a new bridge for the block (see the module's docstring)."""
    tag = secrets.token_hex(3)
    prefix = _free_subnet()
    bridge = f"swb-{tag}"
    with ExitStack() as cleanup:
        _ip("link", "add", bridge, "type", "bridge")
        cleanup.callback(_delete_link, bridge)
        _ip("addr", "add", f"{prefix}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        made = []
        for n in range(1, count + 1):
            name, outside, inside = f"sw-{tag}-{n}", f"swv-{tag}-{n}", f"swi-{tag}-{n}"
            address = f"{prefix}.{10 + n}"
            _ip("netns", "add", name)
            cleanup.callback(_remove_namespace, name)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            # Deleting one end of a veth pair deletes the other, wherever it is.
            cleanup.callback(_delete_link, outside)
            _ip("link", "set", inside, "netns", name)
            _ip("link", "set", outside, "master", bridge)
            _ip("link", "set", outside, "up")
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", inside)
            _ip("-n", name, "link", "set", inside, "up")
            _ip("-n", name, "link", "set", "lo", "up")
            made.append(Host(name, address))
        yield Network(address=f"{prefix}.1", subnet=f"{prefix}.0/24", hosts=tuple(made))
