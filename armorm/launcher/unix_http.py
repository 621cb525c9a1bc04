"""HTTP over a Unix socket, synchronously: the supervisor's readiness probe of a tritonserver that listens only on
the private sockets behind the gateway. The standard library's client with the socket swapped; the gateway's own
asyncio traffic goes through aiohttp's UnixConnector instead."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def get_status(connection: http.client.HTTPConnection, path: str) -> int | None:
    """The status of GET `path`, or None when the server cannot be reached; the connection is closed after."""
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()
