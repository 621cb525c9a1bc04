"""Process queries and stopping, through psutil: who is in a process group (tritonserver and its model processes
share one), whether a pid is alive, and terminate → wait → kill."""

from __future__ import annotations

import os
import signal
import subprocess

import psutil


def process_group(pgid: int) -> dict[int, str]:
    """pid → command line of every live (non-zombie) process in a process group."""
    found = {}
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) != pgid:
                continue
            process = psutil.Process(pid)
            with process.oneshot():
                if process.status() == psutil.STATUS_ZOMBIE:
                    continue
                found[pid] = " ".join(process.cmdline())
        except (OSError, psutil.Error):  # gone since it was listed, or not ours to read
            continue
    return found


def alive(pid: int, uid: int | None = None) -> bool:
    """Whether a live (non-zombie) process has this pid and, given `uid`, runs as that user: a pid reused by
    another user's process, or a dead owner its parent has not reaped yet, is no owner."""
    if not psutil.pid_exists(pid):  # also false for a thread id
        return False
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            return process.status() != psutil.STATUS_ZOMBIE and (uid is None or process.uids().effective == uid)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # it exists; who runs it cannot be read
        return True


def terminate(process: subprocess.Popen, timeout: float, kill_group: bool = False) -> int | None:
    """SIGTERM, then SIGKILL (to its whole process group with `kill_group`) if it is still there after `timeout`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL) if kill_group else process.kill()
            except (ProcessLookupError, PermissionError):
                pass
            process.wait(10)
    return process.returncode
