"""`armorm-serve`: the gateway on the public ports, tritonserver behind it on private Unix sockets, and a
supervisor that restarts tritonserver when it or a model process dies.

- Ports: the gateway binds gRPC, HTTP and metrics first and refuses to start when anything holds one of them.
- Crashes: restarts with exponential backoff (1 s doubling to 60 s; reset after 10 healthy minutes), forever
  unless `--max-restarts` says otherwise (containers pass 0 so the orchestrator decides). Clients see fast
  UNAVAILABLE meanwhile, which they retry.
- Shutdown (SIGTERM/SIGINT): the gateway refuses new inference and reports not ready, every call already inside
  Triton finishes (counted exactly by the gateway, at most `--drain-timeout`), then Triton stops.
- Secrets (ARMORM_ADMIN_KEY, ARMORM_API_KEY, or files named by ARMORM_ADMIN_KEY_FILE, ARMORM_API_KEY_FILE) are
  read at start, removed from the environment, and stay in this process.
- If this process is killed outright, the kernel sends tritonserver SIGTERM (parent-death signal), and the next
  start removes shared memory that a killed server left behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from armorm.gateway import (
    AccessPolicy,
    ConnectionLimits,
    Gateway,
    GatewayConfig,
    GatewayStartError,
    PortTakenError,
    TlsFiles,
    Upstream,
)
from armorm.gateway.admission import INFERENCE_CHARGE, LARGE_SHARE
from armorm.gateway.routes import public_models_of, reward_models_of
from armorm.launcher.model_config import conversation_bytes_limit
from armorm.launcher.orphans import private_socket_dir, remove_orphaned_segments, remove_orphaned_socket_dirs
from armorm.launcher.placement import DEVICES, PlacementError, choose_placement, serving_repository, visible_gpus
from armorm.launcher.triton_process import ServerStartError, TritonServer
from armorm.launcher.upstream import UpstreamSockets
from armorm_client.contract import MANIFEST

ADMIN_KEY_ENV = "ARMORM_ADMIN_KEY"
API_KEY_ENV = "ARMORM_API_KEY"
FILE_SUFFIX = "_FILE"  # ARMORM_API_KEY_FILE=/secrets/api-key: the key from a file (a mounted Secret)


MAX_KEY_BYTES = 4096
# Exit statuses: 2 for anything the operator must fix; 3 when a port is taken (a caller may retry elsewhere).
EXIT_CANNOT_START, EXIT_PORT_TAKEN = 2, 3
# tritonserver flags armorm-serve owns: passed after "--" they would bypass the gateway or break supervision.
RESERVED_TRITON_FLAGS = ("--grpc-address", "--grpc-port", "--http-address", "--http-port", "--metrics-address",
                         "--metrics-port", "--model-repository", "--model-control-mode", "--backend-config=python,shm")


class UnusableKeyError(ValueError):
    """A key given to armorm-serve cannot be used; the message says which and why."""


def take_secret(name: str) -> str | None:
    """The key from the file named by `name`_FILE (a mounted Secret) or from `name`, removed from this process's
    environment either way, so that no child (tritonserver, the model processes) inherits it.

    A key that is set must be usable: an empty or unreadable file, a key that is not printable ASCII (gRPC
    metadata cannot carry it) or both forms at once stop the start-up instead of silently opening the API."""
    path = os.environ.pop(name + FILE_SUFFIX, None)
    value = os.environ.pop(name, None)
    if path is None:
        return value or None  # an unset or empty variable: no key (compose passes empty ones)
    if value:
        raise UnusableKeyError(f"both {name} and {name}{FILE_SUFFIX} are set: give one")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_KEY_BYTES + 1)
    except OSError as err:
        raise UnusableKeyError(f"{name}{FILE_SUFFIX}: cannot read {path}: {err.strerror}") from None
    key = raw.strip()
    if len(raw) > MAX_KEY_BYTES or not key or not all(0x21 <= byte <= 0x7E for byte in key):
        raise UnusableKeyError(f"{name}{FILE_SUFFIX}: {path} must hold one key of printable ASCII without spaces, "
                        f"at most {MAX_KEY_BYTES} bytes (it is empty, too long, or holds other bytes)")
    return key.decode("ascii")


@dataclass(frozen=True)
class RestartPolicy:
    """Backoff between restarts; `max_restarts` None restarts forever, N gives up after N within `window_s`."""

    max_restarts: int | None = None
    window_s: float = 600.0
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    healthy_after_s: float = 600.0  # a server that ran this long resets the backoff

    def backoff(self, consecutive: int) -> float:
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * 2 ** max(consecutive - 1, 0))
        return ceiling * random.uniform(0.8, 1.0)  # replicas restarting together do not retry in lockstep


def say(message: str) -> None:
    print(f"armorm-serve: {message}", file=sys.stderr, flush=True)


class Supervisor:
    def __init__(self, triton: TritonServer, gateway: Gateway, restarts: RestartPolicy, drain_timeout: float,
                 exit_timeout: float = 30.0) -> None:
        self.triton, self.gateway = triton, gateway
        self.restarts, self.drain_timeout, self.exit_timeout = restarts, drain_timeout, exit_timeout
        self.stopping = threading.Event()
        self._restart_times: list[float] = []

    def run(self) -> int:
        """Serve until asked to stop (0) or until restarts are exhausted (1)."""
        consecutive = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            problem = self.serve_once()
            if problem is None:
                break
            if time.monotonic() - started >= self.restarts.healthy_after_s:
                consecutive = 0
            consecutive += 1
            if not self.restart_allowed(problem):
                return 1
            delay = self.restarts.backoff(consecutive)
            say(f"{problem}: restarting tritonserver in {delay:.1f}s (failure {consecutive} in a row)")
            self.stopping.wait(delay)
        self.shut_down()
        return 0

    def serve_once(self) -> str | None:
        """Start Triton and watch it; the problem that ended it, or None when asked to stop."""
        say(f"starting tritonserver on {self.triton.repository} (log: {self.triton.log_path}) ...")
        try:
            self.triton.start(should_stop=self.stopping.is_set)
        except ServerStartError as err:
            return None if self.stopping.is_set() else f"start-up failed: {err}"
        config = self.gateway.config
        say(f"ready: gRPC {config.host}:{config.grpc_port}, HTTP {config.host}:{config.http_port}, metrics "
            f"{config.host}:{config.metrics_port}; watching {', '.join(sorted(self.triton.expected_instances))}")
        strikes = 0
        # A problem must persist over several polls: /proc can miss a busy process for an instant.
        while not self.stopping.wait(0.5):
            problem = self.triton.problem()
            strikes = strikes + 1 if problem else 0
            if problem and (strikes >= 4 or self.triton.process.poll() is not None):
                self.triton.stop(timeout=5.0)  # a crashed model never unloads: no drain
                return problem
        return None

    def restart_allowed(self, problem: str) -> bool:
        if self.restarts.max_restarts is None:
            return True
        now = time.monotonic()
        self._restart_times[:] = [t for t in self._restart_times if now - t < self.restarts.window_s] + [now]
        if len(self._restart_times) > self.restarts.max_restarts:
            say(f"{problem}; {len(self._restart_times) - 1} restarts within {self.restarts.window_s:.0f}s already "
                "(--max-restarts): exiting so that the orchestrator replaces this instance")
            return False
        return True

    def shut_down(self) -> None:
        say("stopping: new requests are refused, admitted ones finish ...")
        self.gateway.begin_drain()
        start = time.monotonic()
        left = self.gateway.wait_idle(self.drain_timeout) if self.triton.process else 0
        seconds = time.monotonic() - start
        say(f"drained in {seconds:.1f}s" if left == 0
            else f"drain timed out after {seconds:.0f}s with {left} requests inside tritonserver")
        code = self.triton.stop(timeout=self.exit_timeout)
        self.gateway.stop()
        say(f"tritonserver stopped (exit code {code})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="armorm-serve", description="Serve an exported ArmoRM model repository.")
    parser.add_argument("repository", type=Path, nargs="?", default=Path("build/repository"))
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all interfaces)")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--backbone-device", choices=DEVICES, default="auto",
                        help="where the backbone runs: auto (a GPU when this node has one), cpu, gpu (refuse to "
                             "start without one), exported (the repository's config.pbtxt as written)")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate: serve gRPC and HTTP over TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    parser.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA (mTLS)")
    parser.add_argument("--max-request-bytes", type=int, default=GatewayConfig.max_request_bytes,
                        help="largest request body or message accepted (default %(default)s)")
    parser.add_argument("--max-in-flight", type=int, default=GatewayConfig.max_in_flight,
                        help="inference calls inside the model server beyond which new ones get UNAVAILABLE")
    parser.add_argument("--refused-reward", type=float, default=None, metavar="REWARD",
                        help="POST /get_reward: a query the model refuses (INVALID_ARGUMENT) gets this reward and "
                             "extra_logs refused=1 instead of failing the call (a call may say ?refused_reward=R); "
                             "default: the call fails with the query's reason")
    parser.add_argument("--max-connection-age", type=float, default=None, metavar="SECONDS",
                        help="ask gRPC clients to reconnect after this long (behind a Kubernetes Service they then "
                             "reach new replicas); default: connections live as long as the client keeps them")
    parser.add_argument("--max-buffered-bytes", type=int, default=GatewayConfig.max_buffered_bytes,
                        help="request bytes held at once across gRPC and HTTP; a request over it is refused at once "
                             "(HTTP 503 with Retry-After, gRPC RESOURCE_EXHAUSTED) (default %(default)s)")
    limits = ConnectionLimits()
    for flag, attribute, kind, text in (
        ("--header-timeout", "header_timeout_s", float, "seconds for a request's headers (and a gRPC connection's "
                                                        "HTTP/2 preface and TLS handshake)"),
        ("--body-idle-timeout", "body_idle_timeout_s", float, "seconds without a body byte before the request is "
                                                              "shed (408)"),
        ("--min-body-rate", "min_body_rate", float, "bytes/s a body must average once it has taken --body-rate-grace"),
        ("--body-rate-grace", "body_rate_grace_s", float, "seconds before --min-body-rate applies"),
        ("--keepalive-timeout", "keepalive_timeout_s", float, "seconds an idle HTTP keep-alive connection stays open"),
        ("--max-connections", "max_connections", int, "open connections per listener"),
        ("--max-connections-per-address", "max_connections_per_address", int,
         "open HTTP connections per client address and listener (behind a proxy every client shares its address)"),
        ("--grpc-max-concurrent-streams", "grpc_max_concurrent_streams", int, "concurrent calls per gRPC connection"),
        ("--grpc-max-connection-idle", "grpc_max_connection_idle_s", float,
         "seconds a gRPC connection without calls stays open"),
        ("--grpc-min-ping-interval", "grpc_min_ping_interval_s", float,
         "clients that ping more often than this (seconds) are disconnected"),
    ):
        parser.add_argument(flag, dest=attribute, type=kind, default=getattr(limits, attribute),
                            help=f"{text}; 0: no limit (default %(default)s)")
    parser.add_argument("--log-file", default="build/tritonserver.log", help="tritonserver's log; - for stdout")
    parser.add_argument("--max-restarts", type=int, default=None,
                        help="give up (exit 1) after this many restarts within --restart-window; default: never "
                             "give up, back off instead; 0 in containers, where the orchestrator restarts")
    parser.add_argument("--restart-window", type=float, default=600.0, help="seconds over which restarts are counted")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="on SIGTERM, seconds to let admitted requests finish before stopping tritonserver")
    parser.add_argument("--startup-timeout", type=float, default=900.0,
                        help="seconds tritonserver may take to load the models")
    parser.add_argument("--exit-timeout", type=float, default=30.0,
                        help="after the drain, seconds tritonserver may take to stop before it is killed")
    parser.epilog = "Flags after -- go to tritonserver as they are (not those that armorm-serve sets itself)."
    argv = sys.argv[1:] if argv is None else list(argv)
    # Everything after "--" goes to tritonserver, wherever the repository and the options stand.
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.extra = argv[split + 1:]
    owned = [flag for flag in args.extra if flag.startswith(RESERVED_TRITON_FLAGS)]
    if owned:
        parser.error(f"{', '.join(owned)}: armorm-serve sets these itself (tritonserver listens only behind the "
                     "gateway); use armorm-serve's own options")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key (client certificates are checked over TLS)")
    limit_fields = ConnectionLimits.__dataclass_fields__
    negative = [name for name in limit_fields if getattr(args, name) < 0]
    if negative:
        parser.error("limits must be 0 (none) or more")
    largest = INFERENCE_CHARGE * args.max_request_bytes
    if args.max_buffered_bytes * LARGE_SHARE < largest:
        parser.error(f"--max-buffered-bytes must hold one of the largest requests in its share for large ones "
                     f"({LARGE_SHARE:.0%}): at least {int(largest / LARGE_SHARE)} for --max-request-bytes "
                     f"{args.max_request_bytes} (an inference body is charged {INFERENCE_CHARGE} times its size: the "
                     "copies held of it while it is in flight)")
    if args.refused_reward is not None and not math.isfinite(args.refused_reward):
        parser.error("--refused-reward must be a finite number (a trainer would train on it)")
    if args.max_connection_age is not None and not 0 < args.max_connection_age <= 2**31 / 1000:
        parser.error("--max-connection-age must be a number of seconds above 0 and below 2147483")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # first: no child, not even the GPU probe, may inherit a key
        policy = AccessPolicy(admin_key=take_secret(ADMIN_KEY_ENV), api_key=take_secret(API_KEY_ENV))
    except UnusableKeyError as err:
        say(f"cannot start: {err}")
        return EXIT_CANNOT_START
    if not ((args.repository / "armorm" / "config.pbtxt").exists() or (args.repository / MANIFEST).exists()):
        say(f"cannot start: {args.repository} is not an exported repository: run `make export` first")
        return EXIT_CANNOT_START
    policy = dataclasses.replace(policy, public_models=public_models_of(args.repository))
    if args.log_file != "-":
        Path(args.log_file).parent.mkdir(parents=True, exist_ok=True)
    try:
        gpus = visible_gpus() if args.backbone_device in ("auto", "gpu") else 0
        placement = choose_placement(args.backbone_device, gpus)
    except PlacementError as err:
        say(f"cannot start: {err}")
        return EXIT_CANNOT_START
    say(placement.reason)
    for name in remove_orphaned_segments(own_pid_is_stale=True) + remove_orphaned_socket_dirs(own_pid_is_stale=True):
        say(f"removed what a killed server left: {name}")
    private = private_socket_dir()  # 0700: only this user can reach Triton's sockets
    sockets = UpstreamSockets(private)
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    upstream = Upstream(sockets.grpc_target, sockets.http, sockets.metrics)
    limits = ConnectionLimits(**{name: getattr(args, name) for name in ConnectionLimits.__dataclass_fields__})
    gateway = Gateway(GatewayConfig(upstream, args.host, args.grpc_port, args.http_port, args.metrics_port, policy,
                                    tls, args.max_request_bytes, args.max_in_flight, args.max_connection_age,
                                    max_buffered_bytes=args.max_buffered_bytes, limits=limits,
                                    max_conversation_bytes=conversation_bytes_limit(args.repository)
                                    or GatewayConfig.max_conversation_bytes, refused_reward=args.refused_reward,
                                    reward_models=reward_models_of(args.repository)))
    try:
        repository = serving_repository(args.repository, placement, private)
        gateway.start()
    except (PlacementError, GatewayStartError, OSError) as err:  # OSError: the view could not be made
        say(f"cannot start: {err}")
        shutil.rmtree(private, ignore_errors=True)
        return EXIT_PORT_TAKEN if isinstance(err, PortTakenError) else EXIT_CANNOT_START
    if repository != args.repository:
        say(f"serving {args.repository} through {repository}: the backbone's instance kind set for this node")
    triton = TritonServer(repository, log_path=Path(args.log_file), extra_args=args.extra,
                          startup_timeout=args.startup_timeout, sockets=sockets)
    supervisor = Supervisor(triton, gateway, RestartPolicy(args.max_restarts, args.restart_window),
                            args.drain_timeout, args.exit_timeout)

    def request_stop(*_: object) -> None:
        # Event.set takes a lock the main thread may hold when the signal lands: set it from another thread.
        threading.Thread(target=supervisor.stopping.set, daemon=True).start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        return supervisor.run()
    finally:
        if supervisor.triton.process is not None and supervisor.triton.process.poll() is None:
            supervisor.triton.stop(timeout=10.0)
        gateway.stop()
        shutil.rmtree(private, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
