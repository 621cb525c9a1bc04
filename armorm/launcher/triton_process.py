"""One tritonserver process on a model repository, from start to stop.

It starts the server found by `TritonInstall` under a parent-death trampoline, waits until it is ready (failing
fast with the log tail), watches its model processes, and on stop terminates → waits → kills the whole process
group, then removes the Python-backend shared memory it left in /dev/shm. Under `armorm-serve` it listens on Unix
sockets behind the gateway (armorm.gateway); tests and benchmarks may run it alone on loopback TCP. It never gets a
secret on its command line.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from armorm.launcher.install import ServerStartError, TritonInstall
from armorm.launcher.loopback import ServerUrls, free_port
from armorm.launcher.model_config import python_instances
from armorm.launcher.orphans import remove_segments, segment_prefix
from armorm.launcher.processes import process_group, terminate
from armorm.launcher.unix_http import UnixHTTPConnection, get_status
from armorm.launcher.upstream import UpstreamSockets

__all__ = ["ServerStartError", "TritonServer"]

# Run before tritonserver's own code: the kernel sends it SIGTERM when its parent (the supervisor) dies, even by
# SIGKILL, so no server outlives its supervisor; SIGTERM lets it unload the models and free its shared memory.
_PARENT_DEATH_TRAMPOLINE = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('armorm: the supervisor died before tritonserver started')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


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
    shm_prefix: str = field(default_factory=segment_prefix, init=False)
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
        connection = (UnixHTTPConnection(self.sockets.http, timeout=2) if self.sockets
                      else http.client.HTTPConnection(self.host, self.http_port, timeout=2))
        return get_status(connection, "/v2/health/ready") == 200

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
        remove_segments(self.shm_prefix)
        return self.process.returncode

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
