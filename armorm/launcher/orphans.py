"""What a server leaves behind when it is killed: Python-backend shared-memory segments in /dev/shm and the private
directory of tritonserver's sockets. Both carry the owner's pid in their names, so the next start can remove the
ones whose owner is gone (a supervisor killed with SIGKILL cleans nothing up) and leave a live owner's alone."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

from armorm.launcher.processes import alive

# Each server names its Python-backend shared-memory regions SHM_PREFIX + the owner's pid + a token, so cleanup
# after it never touches another server's segments, and segments of a killed owner can be found later.
SHM_PREFIX = "armorm_"
_SHM_OWNER = re.compile(re.escape(SHM_PREFIX) + r"(\d+)_")
SOCKET_DIR_PREFIX = "armorm-sockets-"
_SOCKET_DIR_OWNER = re.compile(re.escape(SOCKET_DIR_PREFIX) + r"(\d+)-")


def segment_prefix() -> str:
    """A prefix for one server's shared-memory regions (`--backend-config=python,shm-region-prefix-name`)."""
    return f"{SHM_PREFIX}{os.getpid()}_{secrets.token_hex(4)}_"


def shm_segments(prefix: str = SHM_PREFIX) -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob(prefix + "*")} if shm.exists() else set()


def remove_segments(prefix: str) -> None:
    """Delete every shared-memory segment whose name starts with `prefix` (one stopped server's)."""
    for name in shm_segments(prefix):
        Path("/dev/shm", name).unlink(missing_ok=True)


def private_socket_dir() -> Path:
    """A 0700 directory for tritonserver's sockets, named after this process so that a killed owner's is found."""
    return Path(tempfile.mkdtemp(prefix=f"{SOCKET_DIR_PREFIX}{os.getpid()}-"))


def remove_orphaned_socket_dirs(own_pid_is_stale: bool = False) -> list[str]:
    """Delete this user's socket directories whose owning armorm-serve is gone (see `_orphaned`)."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(SOCKET_DIR_PREFIX + "*"):
        match = _SOCKET_DIR_OWNER.match(path.name)
        if match is None or not _orphaned(path, int(match.group(1)), own_pid_is_stale):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(str(path))
    return removed


def remove_orphaned_segments(own_pid_is_stale: bool = False) -> list[str]:
    """Delete this user's shared-memory segments whose owning process is gone (e.g. a supervisor killed with
    SIGKILL); another user's are left alone (/dev/shm is sticky: unlinking them would fail)."""
    removed = []
    for name in shm_segments():
        match = _SHM_OWNER.match(name)
        path = Path("/dev/shm", name)
        if match is None or not _orphaned(path, int(match.group(1)), own_pid_is_stale):
            continue
        try:
            path.unlink(missing_ok=True)
        except OSError:
            continue
        removed.append(name)
    return removed


def _orphaned(path: Path, owner_pid: int, own_pid_is_stale: bool) -> bool:
    """Ours (same uid) and its owner gone: no live process of ours holds its pid. `own_pid_is_stale`: called at
    start, before this process made anything, so a name carrying this very pid was left by an earlier process that
    had it: in a container armorm-serve is PID 1 every time, and /tmp and /dev/shm (emptyDirs) outlive a container
    restart."""
    try:
        uid = path.stat().st_uid
    except OSError:
        return False
    if uid != os.getuid():
        return False
    if owner_pid == os.getpid():
        return own_pid_is_stale
    return not alive(owner_pid, uid)
