"""The connections of one HTTP listener, guarded against clients that hold them open (slowloris).

aiohttp's server closes idle keep-alive connections (keepalive_timeout) and bounds header lines, but has no
header read timeout and no connection caps. `GuardedProtocol` wraps each of its connections and adds both:
- at most `max_connections` open on the listener and `max_connections_per_address` per client address; one
  more is answered 503 and closed at once;
- the headers of a request must be complete within `header_timeout_s` of the connection opening or of the first
  byte after the previous answer (nginx's client_header_timeout), else 408 and the connection is closed.
Bodies are timed where they are read (http_listener.py). Closed connections are counted by reason.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from armorm.gateway.config import ConnectionLimits
from armorm.gateway.stats import GatewayStats

SHED_REASONS = ("header_timeout", "connection_cap")


def _raw_response(status: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Retry-After: 1\r\nConnection: close\r\n\r\n").encode() + body


@dataclass(eq=False)
class ConnectionGuard:
    """One listener's open connections, in all and per client address, and the shed ones by reason."""

    listener: str
    limits: ConnectionLimits
    stats: GatewayStats
    per_address: Counter[str] = field(default_factory=Counter)
    protocols: dict[Any, GuardedProtocol] = field(default_factory=dict)  # aiohttp's handler → its guard

    def __post_init__(self) -> None:
        for reason in SHED_REASONS:  # every series from the start (at 0), so rates and alerts have a baseline
            self.stats.shed[(self.listener, reason)] += 0
        self.stats.connections[self.listener] += 0

    def over_cap(self, address: str) -> str | None:
        limits = self.limits
        if limits.max_connections and self.stats.connections[self.listener] >= limits.max_connections:
            return f"the server has {limits.max_connections} connections open on this port, its limit"
        if limits.max_connections_per_address and self.per_address[address] >= limits.max_connections_per_address:
            return f"{limits.max_connections_per_address} connections from {address} are open, the limit per address"
        return None

    def shed(self, reason: str) -> None:
        self.stats.shed[(self.listener, reason)] += 1

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        """Runs once a request's headers are complete: its connection leaves the header timer until answered."""
        guarded = self.protocols.get(request.protocol)
        if guarded is not None:
            guarded.request_began()
        try:
            return await handler(request)
        finally:
            if guarded is not None:
                guarded.request_ended()


class GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the caps and the header timer of `guard`."""

    def __init__(self, inner: Any, guard: ConnectionGuard) -> None:
        self.inner, self.guard = inner, guard
        self.transport: asyncio.Transport | None = None
        self.address = ""
        self.in_request = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self.guard
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        refusal = guard.over_cap(self.address)
        guard.stats.connections[guard.listener] += 1
        guard.per_address[self.address] += 1
        guard.protocols[self.inner] = self
        self.inner.connection_made(transport)
        if refusal is not None:
            guard.shed("connection_cap")
            self.close(_raw_response("503 Service Unavailable", refusal + "; retry shortly"))
            return
        self.arm()

    def arm(self) -> None:
        timeout = self.guard.limits.header_timeout_s
        if timeout > 0:
            self.timer = asyncio.get_running_loop().call_later(timeout, self.headers_timed_out)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def headers_timed_out(self) -> None:
        self.timer = None
        self.guard.shed("header_timeout")
        seconds = self.guard.limits.header_timeout_s
        self.close(_raw_response("408 Request Timeout", f"the request headers did not arrive within {seconds:g} s"))

    def close(self, answer: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)
        self.inner.force_close()  # closes the transport once the answer is written

    def request_began(self) -> None:
        self.in_request = True
        self.disarm()

    def request_ended(self) -> None:
        self.in_request = False

    def data_received(self, data: bytes) -> None:
        if self.timer is None and not self.in_request:
            self.arm()  # the first byte of the next request on a kept-alive connection
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        guard = self.guard
        self.disarm()
        guard.stats.connections[guard.listener] -= 1
        guard.per_address[self.address] -= 1
        if guard.per_address[self.address] <= 0:
            del guard.per_address[self.address]
        guard.protocols.pop(self.inner, None)
        self.inner.connection_lost(exc)
