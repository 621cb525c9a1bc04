"""Process queries that only tests and benchmarks make (through psutil): every live process, and a process's
descendants, as pid and command line. The launcher's own (process groups) are in armorm.launcher.processes."""

from __future__ import annotations

from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class LiveProcess:
    pid: int
    parent: int
    command: str


def live_processes() -> list[LiveProcess]:
    """Every live (non-zombie) process whose command line this user can read."""
    found = []
    for process in psutil.process_iter(["ppid", "status", "cmdline"]):
        info = process.info
        if info["status"] == psutil.STATUS_ZOMBIE or info["cmdline"] is None:  # None: gone or not readable
            continue
        found.append(LiveProcess(process.pid, info["ppid"], " ".join(info["cmdline"])))
    return found


def descendants(pid: int) -> dict[int, str]:
    """pid → command line of every live descendant of `pid`."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    found = {}
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                found[child.pid] = " ".join(child.cmdline())
        except psutil.Error:  # gone since it was listed
            continue
    return found
