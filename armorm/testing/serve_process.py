"""`armorm-serve` as a child process, the way a container runs it: for the demo, benchmarks and tests.

Free ports, readiness over the gateway's HTTP with a deadline, the log tails when it dies during start-up,
and SIGTERM → wait → SIGKILL on stop. Keys reach it through the environment only.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from armorm.gateway import TlsFiles
from armorm.launcher.loopback import ServerUrls, free_port
from armorm.launcher.processes import terminate
from armorm.launcher.server import ADMIN_KEY_ENV, API_KEY_ENV, EXIT_PORT_TAKEN
from armorm.launcher.triton_process import ServerStartError
from armorm.testing.processes import descendants
from armorm_client.contract import ADMIN_HEADER, GRPC_HEADER_PREFIX

# A port chosen free can be taken before armorm-serve binds it; it then exits EXIT_PORT_TAKEN and is started again.
PORT_RACE_ATTEMPTS = 3


@dataclass
class ServeProcess(ServerUrls):
    repository: Path
    log_dir: Path
    admin_key: str | None = None
    api_key: str | None = None
    tls: TlsFiles | None = None
    client_certificate: tuple[Path, Path] | None = None  # (cert, key) for a server that requires one (mTLS)
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_args: Sequence[str] = ()
    startup_timeout: float = 300.0
    host: str = "127.0.0.1"
    grpc_port: int = 0
    http_port: int = 0
    metrics_port: int = 0
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def cli_log(self) -> Path:
        return self.log_dir / "armorm-serve.log"

    @property
    def triton_log(self) -> Path:
        return self.log_dir / "tritonserver.log"

    @property
    def admin_headers(self) -> dict[str, str]:
        """gRPC metadata that opens the admin APIs (HTTP callers send `armorm-admin-key`)."""
        return {GRPC_HEADER_PREFIX + ADMIN_HEADER: self.admin_key} if self.admin_key else {}

    def grpc_client(self):
        """A plain tritonclient gRPC client for this server (TLS as configured)."""
        import tritonclient.grpc as grpcclient

        if self.tls is None:
            return grpcclient.InferenceServerClient(self.grpc_url)
        return grpcclient.InferenceServerClient(self.grpc_url, ssl=True, root_certificates=str(self.tls.cert))

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "armorm.launcher.server", str(self.repository), "--host", self.host,
                   "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port),
                   "--metrics-port", str(self.metrics_port), "--log-file", str(self.triton_log),
                   "--startup-timeout", str(self.startup_timeout)]
        if self.tls is not None:
            command += ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key)]
            if self.tls.client_ca is not None:
                command += ["--tls-client-ca", str(self.tls.client_ca)]
        return [*command, *self.extra_args]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in (ADMIN_KEY_ENV, API_KEY_ENV)}
        env.update({name: value for name, value in ((ADMIN_KEY_ENV, self.admin_key), (API_KEY_ENV, self.api_key))
                    if value})
        env.update(self.extra_env)
        return env

    def start(self) -> ServeProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        fixed = all((self.grpc_port, self.http_port, self.metrics_port))
        for _ in range(1 if fixed else PORT_RACE_ATTEMPTS):
            if not fixed:
                self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
            with open(self.cli_log, "ab") as log:
                self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=log,
                                                env=self.environment())
            if self.wait_ready():
                return self
            if self.process.returncode != EXIT_PORT_TAKEN:  # anything else is a real failure: no retry
                break
        raise ServerStartError(f"armorm-serve did not become ready (exit code {self.process.poll()}):\n"
                               + self.log_tails())

    @property
    def http_base(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.http_url}"

    def http_ssl_context(self) -> ssl.SSLContext | None:
        """For HTTPS to this loopback server: its certificate is trusted as it is (no chain or name checks)."""
        if self.tls is None:
            return None
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        if self.client_certificate is not None:
            context.load_cert_chain(*self.client_certificate)
        return context

    def is_ready(self) -> bool:
        try:
            url = f"{self.http_base}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=2, context=self.http_ssl_context()) as response:  # noqa: S310
                return response.status == 200
        except OSError:
            return False

    def wait_ready(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self.is_ready():
                return True
            time.sleep(0.25)
        self.stop()
        return False

    def log_tails(self, lines: int = 30) -> str:
        tails = []
        for path in (self.cli_log, self.triton_log):
            if path.exists():
                tails.append(f"--- {path.name}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(tails)

    def triton_pid(self) -> int | None:
        return next((pid for pid, command in descendants(self.process.pid).items()
                     if "bin/tritonserver" in command), None)

    def stop(self, timeout: float = 90.0) -> int | None:
        """SIGTERM (armorm-serve drains, then stops Triton), then SIGKILL after `timeout`."""
        return None if self.process is None else terminate(self.process, timeout)

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
