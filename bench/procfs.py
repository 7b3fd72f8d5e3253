"""Readings from Linux's /proc: peak memory, CPU time and sockets of a process, the machine."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK")
_ESTABLISHED = "01"


def peak_rss(pid: int) -> int | None:
    """The process's peak resident set size (VmHWM) in bytes, or None once it is gone."""
    try:
        status = (PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may contain spaces: split after its closing one.
    return stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time the process has used so far, or None once it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # Fields 14 and 15 of proc(5), counted from the state field (3) here.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a Postgres postmaster's backends)."""
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    try:
        fds = list((PROC / str(pid) / "fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def connected_ports(pid: int) -> set[int]:
    """The remote ports of the process's established TCP connections."""
    inodes = _socket_inodes(pid)
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / str(pid) / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == _ESTABLISHED and fields[9] in inodes:
                ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


@dataclass(frozen=True)
class Machine:
    """What the figures were measured on."""

    cores: int
    cpu: str
    memory_bytes: int


def machine() -> Machine:
    """This machine's logical cores, CPU model and memory."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in (PROC / "cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        meminfo = (PROC / "meminfo").read_text().split()
        memory = int(meminfo[meminfo.index("MemTotal:") + 1]) * 1024
    except (OSError, ValueError):
        memory = 0
    return Machine(os.cpu_count() or 1, cpu, memory)
