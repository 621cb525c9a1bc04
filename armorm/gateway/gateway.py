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

Modules, each importing only those before it: routes, stats, http_body, grpc_messages, reward_api, upstream_pool
(leaves)
← config (ports, limits, TLS loaded once) ← admission (keys, the public model, in-flight slots, drain) ←
http_listener, grpc_listener ← gateway (this file: the loop, start, drain, stop).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from armorm.gateway.admission import Admission
from armorm.gateway.config import GatewayConfig, GatewayStartError, ListenError, LoadedTls, PortTakenError
from armorm.gateway.grpc_listener import GrpcListener, start_grpc
from armorm.gateway.http_listener import HttpListener, start_http, start_metrics
from armorm.gateway.stats import GatewayStats

T = TypeVar("T")


@dataclass
class Gateway:
    config: GatewayConfig
    stats: GatewayStats = field(default_factory=GatewayStats)
    _admission: Admission | None = field(default=None, init=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _listeners: list[GrpcListener | HttpListener] = field(default_factory=list, init=False)

    @property
    def draining(self) -> bool:
        return self._admission is not None and self._admission.draining

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
        """Refuse new inference calls (UNAVAILABLE, retryable elsewhere), report not ready, and let go of kept
        connections to Triton as their calls end (an open one would hold its shutdown)."""
        self._loop.call_soon_threadsafe(self._begin_drain)

    def wait_idle(self, timeout: float) -> int:
        """Wait until no inference call is inside Triton, at most `timeout` s; returns how many still are."""
        return self._call(self._admission.wait_idle(timeout), timeout + 5)

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
        config = self.config
        tls = LoadedTls.load(config.tls) if config.tls else None  # once, for both ports
        self.stats.buffered_bytes_limit = config.max_buffered_bytes
        self._admission = Admission(config.policy, config.max_in_flight, self.stats)
        self._listeners.append(await start_grpc(config, self._admission, tls))
        self._listeners.append(await start_http(config, self._admission, tls))
        self._listeners.append(await start_metrics(config, self.stats))

    def _begin_drain(self) -> None:
        self._admission.draining = True
        for listener in self._listeners:
            listener.begin_drain()

    async def _stop(self) -> None:
        for listener in self._listeners:  # gRPC first: it carries most calls
            await listener.close()
        self._listeners.clear()
