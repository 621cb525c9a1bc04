"""One tritonserver process: the pip-distributed server (nvidia-pytriton 0.7.0 = Triton 2.51.0) or a system
install, on a model repository.

It prepares a backend directory holding the Python-backend stub built for the running Python, sets PATH (the
stub's embedded Python finds this venv through `python3` on PATH) and LD_LIBRARY_PATH, waits until the server is
ready, and on exit terminates → waits → kills, then removes any Python-backend shared-memory segments the server
left in /dev/shm. Under `armorm-serve` it listens on Unix sockets behind the gateway (armorm.gateway); tests and
benchmarks may run it alone on loopback TCP. It never gets a secret on its command line.
"""

from __future__ import annotations

import http.client
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from armorm.gateway import UpstreamSockets

STUB_BIN_ENV = "ARMORM_STUB_BIN"
# Each server names its Python-backend shared-memory regions SHM_PREFIX + the owner's pid + a token, so cleanup
# after it never touches another server's segments, and segments of a killed owner can be found later.
SHM_PREFIX = "armorm_"
_SHM_OWNER = re.compile(re.escape(SHM_PREFIX) + r"(\d+)_")
# Run before tritonserver's own code: the kernel sends it SIGTERM when its parent (the supervisor) dies, even by
# SIGKILL, so no server outlives its supervisor; SIGTERM lets it unload the models and free its shared memory.
_PARENT_DEATH_TRAMPOLINE = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('armorm: the supervisor died before tritonserver started')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class ServerStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class TritonInstall:
    """Where tritonserver lives: the nvidia-pytriton wheel (pip) or a system install (the NGC image)."""

    root: Path  # holds bin/tritonserver, backends/, caches/
    libs: Path | None = None  # pip: .../site-packages/nvidia_pytriton.libs

    @classmethod
    def find(cls) -> TritonInstall:
        explicit = os.environ.get("ARMORM_TRITON_ROOT")
        if explicit:  # a system install, or the wheel's layout unpacked elsewhere (the device kit)
            libs = Path(explicit).parent.parent / "nvidia_pytriton.libs"
            return cls(root=Path(explicit), libs=libs if libs.is_dir() else None)
        try:
            import pytriton
        except ImportError:
            system = Path("/opt/tritonserver")
            if (system / "bin" / "tritonserver").exists():
                return cls(root=system)
            raise ServerStartError(
                "tritonserver is not installed: pip install 'nvidia-pytriton==0.7.0' (or `pip install -e .[server]`),"
                " or set ARMORM_TRITON_ROOT to a Triton install"
            ) from None
        root = Path(pytriton.__file__).resolve().parent / "tritonserver"
        return cls(root=root, libs=root.parent.parent / "nvidia_pytriton.libs")

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    def backend_directory(self) -> Path:
        """System installs as they are; the wheel needs a copy of its backends tree holding the stub
        built for this Python (in a per-user cache, built once)."""
        if self.libs is None:
            return self.root / "backends"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self.root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            raise ServerStartError(f"pytriton ships no Python-backend stub for Python {version}")
        default_cache = Path(tempfile.gettempdir()) / f"armorm-triton-{os.getuid()}"
        cache = Path(os.environ.get("ARMORM_TRITON_CACHE", default_cache))
        target = cache / f"backends-py{version}"
        if not (target / "python" / stub.name).exists():
            staging = cache / f".staging-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(self.root / "backends", staging, symlinks=True)
            shutil.copy2(stub, staging / "python" / stub.name)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        return target

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """tritonserver's environment; its model processes inherit it.

        The stubs run an isolated embedded Python (PYTHONPATH is ignored) that takes its site-packages from the
        `python3` first on PATH: this interpreter's, or the venv named by ARMORM_STUB_BIN (the device kit's,
        holding numpy 1.x: the 24.10 stub crashes on BYTES with numpy 2).
        """
        env = dict(os.environ if base is None else base)
        bindir = env.get(STUB_BIN_ENV) or str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
        if self.libs is not None:
            libdirs = [str(self.libs), sysconfig.get_config_var("LIBDIR") or ""]
            env["LD_LIBRARY_PATH"] = os.pathsep.join([d for d in libdirs + [env.get("LD_LIBRARY_PATH", "")] if d])
        return env


@dataclass(frozen=True)
class LiveProcess:
    pid: int
    parent: int
    group: int
    command: str


def live_processes() -> list[LiveProcess]:
    """Every live (non-zombie) process this user can see, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] == "Z":
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found.append(LiveProcess(int(entry.name), int(fields[1]), int(fields[2]), command))
        except (OSError, ValueError):
            continue
    return found


def process_group(pgid: int) -> dict[int, str]:
    """pid → command line of every live process in a process group."""
    return {p.pid: p.command for p in live_processes() if p.group == pgid}


def descendants(pid: int) -> dict[int, str]:
    """pid → command line of every live descendant of `pid`."""
    processes = live_processes()
    found: dict[int, str] = {}
    frontier = {pid}
    while frontier:
        frontier = {p.pid for p in processes if p.parent in frontier and p.pid not in found}
        found.update({p.pid: p.command for p in processes if p.pid in frontier})
    return found


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


class ServerUrls:
    """The three listeners' addresses, from `host` and the ports of the class that mixes this in."""

    host: str
    grpc_port: int
    http_port: int
    metrics_port: int

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


def python_instances(repository: Path) -> set[str]:
    """Names of the Python-backend instances the configs ask for, as Triton names them
    (`<group name or model_groupindex>_<instance index>`, e.g. armorm_backbone_0_0)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from armorm.launcher.placement import read_config

    names = set()
    for path in Path(repository).glob("*/config.pbtxt"):
        try:
            config = read_config(path)
        except text_format.ParseError:
            continue  # tritonserver refuses it at start-up and says why in its log
        if config.backend != "python":
            continue
        groups = config.instance_group or [model_config_pb2.ModelInstanceGroup(count=1)]
        for index, group in enumerate(groups):
            prefix = group.name or f"{config.name}_{index}"
            names.update(f"{prefix}_{number}" for number in range(max(group.count, 1)))
    return names


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shm_segments(prefix: str = SHM_PREFIX) -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob(prefix + "*")} if shm.exists() else set()


SOCKET_DIR_PREFIX = "armorm-sockets-"
_SOCKET_DIR_OWNER = re.compile(re.escape(SOCKET_DIR_PREFIX) + r"(\d+)-")


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
    """Ours (same uid) and its owner gone. `own_pid_is_stale`: called at start, before this process made anything,
    so a name carrying this very pid was left by an earlier process that had it: in a container armorm-serve is
    PID 1 every time, and /tmp and /dev/shm (emptyDirs) outlive a container restart."""
    try:
        if path.stat().st_uid != os.getuid():
            return False
    except OSError:
        return False
    if owner_pid == os.getpid():
        return own_pid_is_stale
    return not _alive(owner_pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


@dataclass
class TritonServer(ServerUrls):
    """A tritonserver process, on Unix sockets (`sockets`) or loopback TCP. Use as a context manager."""

    repository: Path
    grpc_port: int = 0
    http_port: int = 0
    metrics_port: int = 0
    log_path: Path | None = None
    extra_args: Sequence[str] = ()
    startup_timeout: float = 180.0
    host: str = "127.0.0.1"
    sockets: UpstreamSockets | None = None  # behind the gateway: Unix sockets only, no TCP port
    process: subprocess.Popen | None = field(default=None, init=False)
    shm_prefix: str = field(default_factory=lambda: f"{SHM_PREFIX}{os.getpid()}_{secrets.token_hex(4)}_",
                            init=False)
    expected_instances: set[str] = field(default_factory=set, init=False)

    @property
    def grpc_url(self) -> str:
        return self.sockets.grpc_target if self.sockets else super().grpc_url

    def listen_flags(self) -> list[str]:
        if self.sockets is not None:
            return self.sockets.triton_flags()
        return [f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                f"--http-address={self.host}", f"--http-port={self.http_port}",
                f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}"]

    def command(self, install: TritonInstall) -> list[str]:
        return [
            str(install.binary),
            f"--model-repository={Path(self.repository).resolve()}",
            f"--backend-directory={install.backend_directory()}",
            f"--cache-directory={install.root / 'caches'}",
            *self.listen_flags(),
            "--model-control-mode=none",
            "--exit-on-error=true",
            "--log-verbose=0",
            # p50/p90/p99 of request, queue and compute time per model (nv_inference_*_summary_us{quantile}):
            # what the dashboard plots; the plain counters only give means.
            "--metrics-config=summary_latencies=true",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *self.extra_args,
        ]

    def grpc_client(self):
        """A tritonclient gRPC client straight to this server (not through a gateway)."""
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.grpc_url)

    def start(self, should_stop: Callable[[], bool] = lambda: False) -> TritonServer:
        install = TritonInstall.find()
        self.expected_instances = python_instances(self.repository)
        if self.sockets is None:
            self.grpc_port = self.grpc_port or free_port()
            self.http_port = self.http_port or free_port()
            self.metrics_port = self.metrics_port or free_port()
        else:
            self.sockets.clear()
        if self.log_path is None:
            self.log_path = Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        to_stdout = str(self.log_path) == "-"  # containers: let the runtime collect the log
        log = None if to_stdout else open(self.log_path, "ab")  # appended: a restart keeps the crash's log
        if log is not None:
            log.write(f"==== armorm-serve: starting tritonserver at {time.ctime()} ====\n".encode())
            log.flush()
        command = [sys.executable, "-c", _PARENT_DEATH_TRAMPOLINE, str(os.getpid()), *self.command(install)]
        self.process = subprocess.Popen(command, stdout=log, stderr=None if to_stdout else subprocess.STDOUT,
                                        env=install.environment(), start_new_session=True)
        if log is not None:
            log.close()
        self.wait_ready(should_stop)
        return self

    def stubs(self) -> dict[int, str]:
        """pid → model instance name of each Python-backend stub process of this server."""
        if self.process is None:
            return {}
        found = {}
        for pid, command in process_group(self.process.pid).items():
            if "triton_python_backend_stub" in command:
                parts = command.split()
                found[pid] = parts[-2] if len(parts) >= 2 else command
        return found

    def problem(self) -> str | None:
        """Why this server can no longer serve correctly, or None.

        Triton 2.51 does not restart a Python-backend stub that died: it answers every later request
        for that model with INTERNAL "Stub process ... is not healthy" while still reporting ready.
        """
        if self.process is None or self.process.poll() is not None:
            return f"tritonserver exited (code {None if self.process is None else self.process.returncode})"
        alive = set(self.stubs().values())
        self.expected_instances |= alive  # e.g. one instance per GPU: watched once seen
        missing = self.expected_instances - alive
        return f"model process died: {', '.join(sorted(missing))}" if missing else None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or str(self.log_path) == "-" or not Path(self.log_path).exists():
            return ""
        return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])

    def is_ready(self) -> bool:
        """HTTP /v2/health/ready, on the Unix socket or loopback."""
        connection = (_UnixHTTPConnection(self.sockets.http, timeout=2) if self.sockets
                      else http.client.HTTPConnection(self.host, self.http_port, timeout=2))
        try:
            connection.request("GET", "/v2/health/ready")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def wait_ready(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()  # its model processes and shared memory must not outlive it
                raise ServerStartError(
                    f"tritonserver exited with code {self.process.returncode} during start-up; log tail:\n"
                    + self.log_tail())
            if self.is_ready():
                return  # even when a stop is asked now: clients may already be inside, so the caller drains
            if should_stop():
                break
            time.sleep(0.25)
        self.stop()
        if should_stop():
            raise ServerStartError("stopped during start-up")
        raise ServerStartError(
            f"tritonserver not ready after {self.startup_timeout:.0f}s; log tail:\n" + self.log_tail())

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (Triton finishes what it holds, unloads the models), then SIGKILL the whole process group
        after `timeout`. Draining new requests first is the gateway's job (armorm-serve)."""
        if self.process is None:
            return None
        terminate(self.process, timeout, kill_group=True)
        # Stubs are in the server's session: make sure none outlives it, and wait until they are gone.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + 10
        while process_group(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        for name in shm_segments(self.shm_prefix):
            Path("/dev/shm", name).unlink(missing_ok=True)
        return self.process.returncode

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
