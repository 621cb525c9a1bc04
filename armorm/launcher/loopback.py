"""Loopback TCP listeners of a server run on its own (tests, benchmarks, the demo): free ports and the three URLs.
Under `armorm-serve` tritonserver listens on Unix sockets instead (armorm.launcher.upstream)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now; it may be taken before it is bound (a caller retries on that)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
