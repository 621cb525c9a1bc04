"""The gateway: the only listener clients reach. Triton listens on Unix sockets in a private directory.

Why it exists (Triton 2.51, the release the pip server and the tests run):
- a client cancellation or deadline can crash tritonserver's gRPC frontend (upstream #7368, fixed in 2.53;
  #8034, fixed in 2.57). The gateway never cancels an upstream call: when a caller leaves, the call runs to
  its end inside Triton and the answer is dropped (counted as abandoned), so Triton never sees a cancellation;
- a form-encoded HTTP body of a few MB crashes Triton's HTTP and metrics frontends (upstream #5840, open):
  the gateway bounds and checks every body and forwards it without the client's content type;
- Triton takes restricted-API keys only as command-line flags, which every local user can read from
  /proc/*/cmdline: the gateway checks the keys itself (they stay in its environment) and Triton, reachable
  only through sockets its own user can open, runs without them;
- it counts inference calls inside Triton exactly, which makes draining on shutdown exact.
It runs its own asyncio loop on a thread of `armorm-serve`, so it dies with the supervisor.
"""

from __future__ import annotations

import asyncio
import enum
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from armorm.gateway.routes import AccessPolicy, Api, Denial
from armorm.gateway.stats import GatewayStats

T = TypeVar("T")
DRAINING_MESSAGE = "the server is shutting down and accepts no new requests; retry on another replica"
# The ensemble takes at most 64 conversations of at most 1 MiB each per request (tokenizer max_bytes).
DEFAULT_MAX_REQUEST_BYTES = 65 << 20
# Beyond this many inference calls inside Triton, new ones are refused UNAVAILABLE (retryable) at once.
DEFAULT_MAX_IN_FLIGHT = 4096
# Request checks of larger payloads run in a worker thread: walking megabytes in Python would stall every call.
OFF_LOOP_BYTES = 256 << 10


class GatewayStartError(RuntimeError):
    pass


class ListenError(OSError):
    """A public port could not be bound (held by another process, or not an address of this host)."""


class PortTakenError(GatewayStartError):
    """The gateway could not bind one of its ports: the one start failure worth retrying on other ports."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for TLS on the gRPC and HTTP ports; with client_ca set, clients must present a certificate it
    signed (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class UpstreamSockets:
    """Where Triton listens: Unix sockets in one directory that only the server's user can open."""

    directory: Path

    @property
    def grpc_address(self) -> str:
        return f"unix:{self.directory / 'grpc.sock'}"  # Triton appends ":<port>" to the gRPC address

    @property
    def grpc_target(self) -> str:
        return self.grpc_address + ":0"

    @property
    def http(self) -> Path:
        return self.directory / "http.sock"

    @property
    def metrics(self) -> Path:
        return self.directory / "metrics.sock"

    def triton_flags(self) -> list[str]:
        return [f"--grpc-address={self.grpc_address}", "--grpc-port=0",
                f"--http-address=unix:{self.http}", "--http-port=0",
                f"--metrics-address=unix:{self.metrics}", "--metrics-port=0"]

    def clear(self) -> None:
        """A socket file left by a dead server makes the next bind fail: remove them before each start."""
        for path in self.directory.glob("*.sock*"):
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class GatewayConfig:
    upstream: UpstreamSockets
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    policy: AccessPolicy = AccessPolicy()
    tls: TlsFiles | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    # A gRPC connection older than this is asked to reconnect (GOAWAY once its calls end): a client behind a
    # Kubernetes Service then re-resolves and reaches new replicas. None: connections live forever.
    max_connection_age_s: float | None = None


class Refusal(enum.Enum):
    """Why the gateway answers a call itself; each proxy maps these to its protocol's status."""

    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    DRAINING = "draining"
    OVERLOADED = "overloaded"


@dataclass
class Gateway:
    config: GatewayConfig
    stats: GatewayStats = field(default_factory=GatewayStats)
    draining: bool = field(default=False, init=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _servers: list[Any] = field(default_factory=list, init=False)
    _idle: asyncio.Event | None = field(default=None, init=False)
    _tasks: set[asyncio.Future[Any]] = field(default_factory=set, init=False)

    # --- lifecycle, called from the supervisor's thread -------------------------------------------------
    def start(self, timeout: float = 30.0) -> Gateway:
        """Bind every public port or raise GatewayStartError (a port held by anything else included)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="armorm-gateway", daemon=True)
        self._thread.start()
        try:
            self._call(self._start(), timeout)
        except ListenError as err:
            self.stop()
            raise PortTakenError(str(err)) from err
        except Exception as err:
            self.stop()
            raise GatewayStartError(str(err)) from err
        return self

    def begin_drain(self) -> None:
        """Refuse new inference calls (UNAVAILABLE, retryable elsewhere) and report not ready."""
        self._loop.call_soon_threadsafe(setattr, self, "draining", True)

    def wait_idle(self, timeout: float) -> int:
        """Wait until no inference call is inside Triton, at most `timeout` s; returns how many still are."""

        async def idle() -> int:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            return self.stats.in_flight

        return self._call(idle(), timeout + 5)

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._loop.is_running():
            try:
                self._call(self._stop(), 10)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._thread.is_alive():  # a loop stuck in a callback is left to die with the process
            self._loop.close()
        self._loop = None

    def _call(self, coroutine: Awaitable[T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _start(self) -> None:
        from armorm.gateway.grpc_proxy import start_grpc
        from armorm.gateway.http_proxy import start_http, start_metrics

        self._idle = asyncio.Event()
        self._idle.set()
        self._servers.append(await start_grpc(self))
        self._servers.append(await start_http(self))
        self._servers.append(await start_metrics(self))

    async def _stop(self) -> None:
        for server in self._servers:  # gRPC first: it carries most calls
            await server.close()
        self._servers.clear()

    # --- used by the proxies, on the gateway's loop -----------------------------------------------------
    def authorize(self, protocol: str, api: Api, header: Callable[[str], str | None]) -> tuple[Refusal, str] | None:
        """Count the call and check its keys; (refusal, message) when they do not open `api`."""
        self.stats.requests[(protocol, api.value)] += 1
        denial: Denial | None = self.config.policy.check(api, header)
        if denial is None:
            return None
        refusal = Refusal.UNAUTHENTICATED if denial.missing else Refusal.PERMISSION_DENIED
        self.refuse(protocol, refusal.value)
        return refusal, denial.message

    def admit_inference(self, protocol: str) -> tuple[Refusal, str] | None:
        """Take an in-flight slot for one inference call, or say why not (draining, at the limit).

        An admitted call must reach `upstream(..., inference=True)` with no `await` in between (so a drain
        that starts now counts it), or give the slot back with `release()`.
        """
        refusal: tuple[Refusal, str] | None = None
        if self.draining:
            refusal = (Refusal.DRAINING, DRAINING_MESSAGE)
        elif self.stats.in_flight >= self.config.max_in_flight:
            refusal = (Refusal.OVERLOADED, f"the server has {self.stats.in_flight} requests in flight, its limit; "
                                           "retry with backoff")
        if refusal is not None:
            self.refuse(protocol, refusal[0].value)
            return refusal
        self.stats.in_flight += 1
        self._idle.clear()
        return None

    def release(self) -> None:
        """Give back a slot taken by admit_inference."""
        self.stats.in_flight -= 1
        if self.stats.in_flight == 0:
            self._idle.set()

    async def check(self, check: Callable[..., str | None], payload: bytes, *args: Any) -> str | None:
        """`check(payload, *args)`, the reason a request is malformed or None, off the loop when it is large."""
        if len(payload) < OFF_LOOP_BYTES:
            return check(payload, *args)
        return await asyncio.get_running_loop().run_in_executor(None, check, payload, *args)

    def refuse(self, protocol: str, reason: str) -> None:
        self.stats.refused[(protocol, reason)] += 1

    async def upstream(self, call: Awaitable[T], inference: bool) -> T:
        """Await an upstream call that the caller's cancellation never reaches.

        If the caller goes away (client cancel, deadline, disconnect), this coroutine is cancelled but the
        upstream call keeps running to its end; its answer is dropped and counted as abandoned. An inference
        call gives back its admit_inference slot when it ends.
        """
        task = self.track(call)
        if inference:
            task.add_done_callback(lambda _: self.release())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                self.stats.abandoned += 1
            raise

    def track(self, call: Awaitable[T]) -> asyncio.Future[T]:
        """Run `call` as a task of its own that lives until it ends, whoever awaits it."""
        task = asyncio.ensure_future(call)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned call's error is not worth a warning
