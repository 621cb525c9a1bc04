"""Where tritonserver listens under `armorm-serve`: Unix sockets in a private directory, and the flags that say so."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
