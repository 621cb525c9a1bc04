"""Start the pip-distributed tritonserver (nvidia-pytriton 0.7.0 = Triton 2.51.0) on a model repository.

It prepares a backend directory holding the Python-backend stub built for the running Python,
sets PATH (the stub's embedded Python finds this venv through `python3` on PATH) and LD_LIBRARY_PATH,
waits until the server is ready, and on exit terminates → waits → kills, then removes any
Python-backend shared-memory segments the server left in /dev/shm.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from armorm.contract import ADMIN_HEADER, API_KEY_HEADER, GRPC_HEADER_PREFIX
from armorm.drain import DRAIN_FLAG_ENV, requests_in_pipeline
from armorm.prometheus import scrape

# Each server names its Python-backend shared-memory regions SHM_PREFIX + a token of its own, so cleanup
# after it never touches another server's segments.
SHM_PREFIX = "armorm_"
# Closed unless the caller sends the admin header: model control/repository, shared memory, trace and
# logging. Inference, health and the read-only metadata, model-config and statistics stay open:
# perf_analyzer needs the last three and cannot send gRPC headers.
ADMIN_APIS = ("model-repository", "shared-memory", "trace", "logging")
# A drain lasts at least this long, so that admissions already under way are counted.
DRAIN_SETTLE_S = 0.25


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
        if explicit:
            return cls(root=Path(explicit))
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
        env = dict(os.environ if base is None else base)
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
        if self.libs is not None:
            libdirs = [str(self.libs), sysconfig.get_config_var("LIBDIR") or ""]
            env["LD_LIBRARY_PATH"] = os.pathsep.join([d for d in libdirs + [env.get("LD_LIBRARY_PATH", "")] if d])
        return env


def process_group(pgid: int) -> dict[int, str]:
    """pid → command line of every live (non-zombie) process in a process group."""
    members = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                members[int(entry.name)] = command.decode(errors="replace")
        except (OSError, ValueError):
            continue
    return members


def python_instances(repository: Path) -> set[str]:
    """Names of the Python-backend instances the configs ask for, as Triton names them
    (`<group name or model_groupindex>_<instance index>`, e.g. armorm_backbone_0_0)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    names = set()
    for path in Path(repository).glob("*/config.pbtxt"):
        try:
            config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
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


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for gRPC TLS; with client_ca set, clients must present a certificate it signed (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def flags(self) -> list[str]:
        flags = ["--grpc-use-ssl=true", f"--grpc-server-cert={self.cert}", f"--grpc-server-key={self.key}"]
        if self.client_ca is not None:
            flags += [f"--grpc-root-cert={self.client_ca}", "--grpc-use-ssl-mutual=true"]
        return flags


def security_flags(admin_key: str | None, api_key: str | None) -> list[str]:
    """Restricted-API flags for gRPC and HTTP: admin APIs behind `admin_key` (or closed when None),
    inference behind `api_key` when one is given."""
    admin = admin_key or secrets.token_hex(16)  # no key given: nobody can call the admin APIs
    groups = [(",".join(ADMIN_APIS), ADMIN_HEADER, admin)]
    if api_key:
        groups.append(("inference", API_KEY_HEADER, api_key))
    flags = []
    for apis, header, value in groups:
        rule = f"{apis}:{header}={value}"
        flags += [f"--grpc-restricted-protocol={rule}", f"--http-restricted-api={rule}"]
    return flags


@dataclass
class TritonServer:
    """A tritonserver process on loopback. Use as a context manager."""

    repository: Path
    grpc_port: int = 0
    http_port: int = 0
    metrics_port: int = 0
    log_path: Path | None = None
    extra_args: Sequence[str] = ()
    startup_timeout: float = 180.0
    host: str = "127.0.0.1"
    admin_key: str | None = None  # header value for the restricted admin APIs; None: they stay closed
    api_key: str | None = None  # when set, inference needs the armorm-api-key header too
    tls: TlsFiles | None = None
    restrict_apis: bool = True
    process: subprocess.Popen | None = field(default=None, init=False)
    shm_prefix: str = field(default_factory=lambda: f"{SHM_PREFIX}{secrets.token_hex(4)}_", init=False)
    expected_instances: set[str] = field(default_factory=set, init=False)

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def drain_flag(self) -> Path:
        """Created to drain: the tokenizer then refuses new requests (see armorm.drain)."""
        return Path(tempfile.gettempdir()) / f"{self.shm_prefix}draining"

    def command(self, install: TritonInstall) -> list[str]:
        return [
            str(install.binary),
            f"--model-repository={Path(self.repository).resolve()}",
            f"--backend-directory={install.backend_directory()}",
            f"--cache-directory={install.root / 'caches'}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            "--model-control-mode=none",
            "--exit-on-error=true",
            "--log-verbose=0",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *(security_flags(self.admin_key, self.api_key) if self.restrict_apis else []),
            *(self.tls.flags() if self.tls else []),
            *self.extra_args,
        ]

    @property
    def admin_headers(self) -> dict[str, str]:
        """gRPC metadata that opens the admin APIs (HTTP callers send `armorm-admin-key` instead)."""
        return {GRPC_HEADER_PREFIX + ADMIN_HEADER: self.admin_key} if self.admin_key else {}

    def grpc_client(self):
        """A tritonclient gRPC client for this server (TLS as configured)."""
        import tritonclient.grpc as grpcclient

        if self.tls is None:
            return grpcclient.InferenceServerClient(self.grpc_url)
        return grpcclient.InferenceServerClient(self.grpc_url, ssl=True, root_certificates=str(self.tls.cert))

    def start(self) -> TritonServer:
        install = TritonInstall.find()
        self.expected_instances = python_instances(self.repository)
        self.grpc_port = self.grpc_port or free_port()
        self.http_port = self.http_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        if self.log_path is None:
            self.log_path = Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        to_stdout = str(self.log_path) == "-"  # containers: let the runtime collect the log
        log = None if to_stdout else open(self.log_path, "ab")  # appended: a restart keeps the crash's log
        if log is not None:
            log.write(f"==== armorm-serve: starting tritonserver at {time.ctime()} ====\n".encode())
            log.flush()
        self.drain_flag.unlink(missing_ok=True)
        environment = install.environment()
        environment[DRAIN_FLAG_ENV] = str(self.drain_flag)  # model processes inherit it
        self.process = subprocess.Popen(self.command(install), stdout=log,
                                        stderr=None if to_stdout else subprocess.STDOUT,
                                        env=environment, start_new_session=True)
        if log is not None:
            log.close()
        self.wait_ready()
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
        """HTTP /v2/health/ready: always open and never TLS here, so it works whatever gRPC requires."""
        try:
            url = f"http://{self.host}:{self.http_port}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own loopback server
                return response.status == 200
        except OSError:
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop(drain_timeout=0)  # its model processes and shared memory must not outlive it
                raise ServerStartError(
                    f"tritonserver exited with code {self.process.returncode} during start-up; log tail:\n"
                    + self.log_tail())
            if self.is_ready():
                return
            time.sleep(0.25)
        self.stop(drain_timeout=0)
        raise ServerStartError(
            f"tritonserver not ready after {self.startup_timeout:.0f}s; log tail:\n" + self.log_tail())

    def drain(self, timeout: float, report: Callable[[str], None] | None = None) -> float | None:
        """Refuse new requests, then wait until every admitted one has left the pipeline.

        Returns how many were still inside at the end (0: drained), or None when /metrics cannot be
        read (metrics turned off, server gone): then Triton's own shutdown is all there is.
        """
        self.drain_flag.touch()
        start = time.monotonic()
        last_report, zero_readings = start, 0
        while True:
            try:
                left = max(requests_in_pipeline(scrape(self.metrics_url, timeout=2.0)), 0.0)
            except OSError:
                return None
            now = time.monotonic()
            # Two empty readings, the last well after the flag: a tokenizer batch that was already
            # past its second flag check has had time to count its admissions.
            zero_readings = zero_readings + 1 if left == 0 else 0
            if (zero_readings >= 2 and now - start >= DRAIN_SETTLE_S) or now - start >= timeout:
                return left
            if self.process.poll() is not None:
                return left
            if report is not None and now - last_report >= 2.0:
                report(f"draining: {left:.0f} requests still in the pipeline ({now - start:.0f}s)")
                last_report = now
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0, drain_timeout: float = 30.0,
             report: Callable[[str], None] | None = None) -> int | None:
        """Drain (at most `drain_timeout` s; 0 skips it), SIGTERM, then SIGKILL the whole process group
        after `timeout`."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            if drain_timeout > 0:
                start = time.monotonic()
                left = self.drain(drain_timeout, report)
                if report is not None:
                    seconds = time.monotonic() - start
                    report("drain skipped: /metrics unreadable, so in-flight requests cannot be counted" if left is None
                           else f"drained in {seconds:.1f}s" if left == 0
                           else f"drain timed out after {seconds:.0f}s with {left:.0f} requests in the pipeline")
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
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
        self.drain_flag.unlink(missing_ok=True)
        return self.process.returncode

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="armorm-serve", description="Serve an exported ArmoRM model repository.")
    parser.add_argument("repository", type=Path, nargs="?", default=Path("build/repository"))
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all interfaces)")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate: serve gRPC over TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    parser.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA (mTLS)")
    parser.add_argument("--open-admin-apis", action="store_true",
                        help="do not restrict model control, shared memory, trace and logging")
    parser.add_argument("--log-file", default="build/tritonserver.log", help="tritonserver's log; - for stdout")
    parser.add_argument("--max-restarts", type=int, default=3,
                        help="restarts after a crash (server or model process) before exiting with code 1")
    parser.add_argument("--restart-window", type=float, default=600.0, help="seconds over which restarts are counted")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="on SIGTERM, seconds to let admitted requests finish before stopping tritonserver")
    parser.add_argument("extra", nargs="*", help="extra tritonserver flags, after --")
    args = parser.parse_args(argv)
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    if not (args.repository / "armorm" / "config.pbtxt").exists():
        print(f"{args.repository} is not an exported repository: run `make export` first", file=sys.stderr)
        return 2
    # Secrets come from the environment, never from the command line (visible in `ps`).
    server = TritonServer(args.repository, args.grpc_port, args.http_port, args.metrics_port,
                          log_path=Path(args.log_file), extra_args=args.extra, host=args.host,
                          admin_key=os.environ.get("ARMORM_ADMIN_KEY"), api_key=os.environ.get("ARMORM_API_KEY"),
                          tls=tls, restrict_apis=not args.open_admin_apis)
    if args.log_file != "-":
        Path(args.log_file).parent.mkdir(parents=True, exist_ok=True)
    stop = False

    def request_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    restarts: list[float] = []

    def restart_allowed(problem: str) -> bool:
        now = time.monotonic()
        restarts[:] = [t for t in restarts if now - t < args.restart_window] + [now]
        if len(restarts) > args.max_restarts:
            print(f"{problem}; {len(restarts) - 1} restarts within {args.restart_window:.0f}s already: giving up "
                  "so that the orchestrator replaces this instance", file=sys.stderr, flush=True)
            return False
        print(f"{problem}: restarting tritonserver (restart {len(restarts)} of at most {args.max_restarts} "
              f"per {args.restart_window:.0f}s)", file=sys.stderr, flush=True)
        return True

    while True:
        print(f"starting tritonserver on {args.repository} (log: {server.log_path}) ...", file=sys.stderr, flush=True)
        try:
            server.start()
        except ServerStartError as err:
            if stop:
                return 0
            problem = f"start-up failed: {err}"
            if not restart_allowed(problem):
                return 1
            continue
        print(f"ready: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.metrics_url}; "
              f"watching model processes {', '.join(sorted(server.expected_instances))}; Ctrl-C stops",
              file=sys.stderr, flush=True)
        problem, strikes = None, 0
        # A problem must persist over several polls: /proc can miss a busy process for an instant.
        while not stop and strikes < 4:
            time.sleep(0.5)
            problem = server.problem()
            strikes = strikes + 1 if problem else 0
            if server.process.poll() is not None:
                break
        if stop:
            print("stopping: new requests are refused, admitted ones finish ...", file=sys.stderr, flush=True)
            code = server.stop(timeout=30.0, drain_timeout=args.drain_timeout,
                               report=lambda line: print(line, file=sys.stderr, flush=True))
            print(f"tritonserver stopped (exit code {code})", file=sys.stderr)
            return 0
        server.stop(timeout=5.0, drain_timeout=0)  # after a crash the dead model never unloads: no drain
        if not restart_allowed(problem):
            return 1


if __name__ == "__main__":
    sys.exit(main())
