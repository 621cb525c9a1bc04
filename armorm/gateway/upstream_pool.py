"""A small pool of keep-alive HTTP connections to one of tritonserver's Unix sockets.

Keeping connections needs care with Triton: its shutdown waits for every open HTTP connection (measured on 2.51:
one idle keep-alive connection held a SIGTERM'd server for its whole --exit-timeout-secs; closed, it exits in
under a second), and a connection left from before a restart is dead. So:
- an idle connection closes after IDLE_CLOSE_S: a stop the gateway is not told of (a restart) waits that long;
- `retire()` (the drain, before tritonserver is stopped) closes the kept connections as soon as their calls end,
  and later calls get a connection each that closes with its answer;
- a call whose reused connection turns out closed is sent once more (a scoring call has no side effects).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

IDLE_CLOSE_S = 1.0
# Larger bodies go to the socket in slices of this size: asyncio copies what a write cannot send at once into its
# own buffer, so one write of the whole body would hold it twice.
SEND_SLICE = 1 << 20

Answer = tuple[int, CIMultiDictProxy[str], bytes]


class UpstreamPool:
    def __init__(self, socket_path: Path, connections: int) -> None:
        self._path, self._connections = str(socket_path), connections
        self._session = self._new_session(keep_alive=True)
        self._calls: dict[aiohttp.ClientSession, int] = {}  # calls running on each session
        self._closing: set[asyncio.Task[None]] = set()

    def _new_session(self, keep_alive: bool) -> aiohttp.ClientSession:
        if keep_alive:
            connector = aiohttp.UnixConnector(path=self._path, limit=self._connections, keepalive_timeout=IDLE_CLOSE_S)
        else:
            connector = aiohttp.UnixConnector(path=self._path, limit=self._connections, force_close=True)
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body: bytes | bytearray = b"",
                      timeout: aiohttp.ClientTimeout | None = None) -> Answer:
        """(status, headers, body) of Triton's answer, the body as it came (not decompressed).
        Raises aiohttp.ClientError when Triton cannot be reached."""
        for attempt in (1, 2):
            session = self._session
            self._calls[session] = self._calls.get(session, 0) + 1
            data: Any = body
            if len(body) > SEND_SLICE:
                headers = {**(headers or {}), "Content-Length": str(len(body))}  # not chunked: sent as it is
                data = _slices(memoryview(body))
            try:
                async with session.request(method, "http://triton" + path, headers=headers, data=data,
                                           auto_decompress=False, timeout=timeout) as response:
                    return response.status, response.headers, await response.read()
            except aiohttp.ClientConnectorError:  # nothing listens: starting or restarting
                raise
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):  # a kept connection that had closed
                if attempt == 2:
                    raise
            finally:
                self._calls[session] -= 1
                if session is not self._session and self._calls[session] == 0:
                    self._close_soon(session)
        raise AssertionError("unreachable")

    def retire(self) -> None:
        """Close the kept connections once their calls end; later calls use a connection each."""
        old, self._session = self._session, self._new_session(keep_alive=False)
        if self._calls.get(old, 0) == 0:
            self._close_soon(old)

    def _close_soon(self, session: aiohttp.ClientSession) -> None:
        self._calls.pop(session, None)
        task = asyncio.ensure_future(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for session in {self._session, *self._calls}:
            await session.close()
        self._calls.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


async def _slices(view: memoryview) -> AsyncIterator[memoryview]:
    for start in range(0, len(view), SEND_SLICE):
        yield view[start:start + SEND_SLICE]
