"""Abusive clients over real loopback sockets, and what they cost the server: for tests/test_abuse.py (small) and
scripts/abuse_report.py (full size). Every attack is bounded in count and time.

Attackers connect from 127.0.0.2 (all of 127/8 is loopback on Linux) so that the per-address connection cap
sheds them and not the well-behaved client on 127.0.0.1, as it would for a remote attacker.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

import psutil

from armorm.testing.processes import descendants

ATTACKER_ADDRESS = "127.0.0.2"
GOOD_BODY = json.dumps({"inputs": [{"name": "messages", "shape": [1, 1], "datatype": "BYTES", "data": [json.dumps(
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}])]}]}).encode()


def tree_rss(pid: int) -> int:
    """RSS of a process and all its descendants (the gateway, tritonserver, the model processes), in bytes."""
    total = 0
    for member in [pid, *descendants(pid)]:
        try:
            total += psutil.Process(member).memory_info().rss
        except psutil.Error:
            continue
    return total


@dataclass
class PeakRss:
    """The highest tree_rss(pid) seen while in use, sampled every `interval` s on a thread."""

    pid: int
    interval: float = 0.05
    peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> PeakRss:
        self.peak = tree_rss(self.pid)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, tree_rss(self.pid))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def good_latencies(http_url: str, count: int, gap_s: float = 0.0) -> list[float]:
    """Seconds for each of `count` well-behaved scoring calls over HTTP from 127.0.0.1 (None answers raise)."""
    latencies = []
    for _ in range(count):
        request = urllib.request.Request(f"http://{http_url}/v2/models/armorm/infer", data=GOOD_BODY,
                                         headers={"Content-Type": "application/json"})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback
            response.read()
            if response.status != 200:
                raise AssertionError(f"a good request got {response.status}")
        latencies.append(time.perf_counter() - start)
        time.sleep(gap_s)
    return latencies


def good_client_main(http_url: str, gap_s: float) -> None:
    """GoodClient's process: good calls every gap_s until its stdin closes; prints "ready" after the first, then
    a JSON line: {"latencies": [...]} or {"error": ...}."""
    latencies: list[float] = []
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    try:
        latencies += good_latencies(http_url, 1)
        print("ready", flush=True)
        while not stop.wait(gap_s):
            latencies += good_latencies(http_url, 1)
        print(json.dumps({"latencies": latencies}), flush=True)
    except Exception as err:  # noqa: BLE001 - the parent raises it with what was measured before
        print(json.dumps({"error": f"good request {len(latencies)} failed: {err!r}"}), flush=True)


@dataclass
class GoodClient:
    """A well-behaved client in a process of its own, scoring over HTTP every `gap_s` while in use; `latencies`
    once it ends. Its own process: an attacker's CPU in the test's process (its event loop, the GIL) must not
    delay the measurement, as it would not for a remote attacker. A failed good request raises at exit."""

    http_url: str
    gap_s: float = 0.02
    latencies: list[float] = field(default_factory=list)

    def __enter__(self) -> GoodClient:
        code = f"from armorm.testing.abuse import good_client_main; good_client_main({self.http_url!r}, {self.gap_s})"
        self._process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,  # noqa: S603
                                         stdout=subprocess.PIPE, text=True)
        first = self._process.stdout.readline().strip()
        if first != "ready":
            self._process.kill()
            raise RuntimeError(f"the good client did not start: {first[:500]}")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            answer = json.loads(self._process.communicate(input="", timeout=120)[0].strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, IndexError, ValueError):
            self._process.kill()
            raise AssertionError("the good client ended without its latencies") from None
        if "error" in answer:
            raise AssertionError(answer["error"])
        self.latencies = answer["latencies"]


def p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100, method="inclusive")[98] if len(latencies) > 1 else latencies[0]


async def _connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port, local_addr=(ATTACKER_ADDRESS, 0), limit=1 << 16)


async def _closed_by_server(reader: asyncio.StreamReader, wait_s: float) -> bool:
    """Whether the server closed the connection (reading what it sent first), waiting at most `wait_s`."""
    try:
        async with asyncio.timeout(wait_s):
            while await reader.read(1 << 16):
                pass
        return True
    except TimeoutError:
        return False
    except OSError:  # reset
        return True


HTTP_START, HTTP_DRIP = b"POST /v2/models/armorm/in", b"f" * 10_000  # half a request line, then one byte at a time
GRPC_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GRPC_START, GRPC_DRIP = GRPC_PREFACE[:12], GRPC_PREFACE[12:]  # HTTP/2's connection preface, as slowly


async def slowloris(host: str, port: int, connections: int, trickle_s: float, hold_s: float,
                    start: bytes = HTTP_START, drip: bytes = HTTP_DRIP) -> tuple[int, int]:
    """Open `connections` that send `start`, then a byte of `drip` every `trickle_s`, for `hold_s` seconds;
    returns (connections opened, connections the server still held at the end)."""
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for _ in range(connections):
        try:
            reader, writer = await _connect(host, port)
        except OSError:
            continue
        writer.write(start)
        opened.append((reader, writer))
    deadline = time.monotonic() + hold_s

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            for index in itertools.count():
                if time.monotonic() >= deadline:
                    return True
                if await _closed_by_server(reader, min(trickle_s, max(deadline - time.monotonic(), 0.01))):
                    return False
                writer.write(drip[index:index + 1])
        except OSError:
            return False
        finally:
            writer.close()

    held = await asyncio.gather(*(trickle(r, w) for r, w in opened))
    return len(opened), sum(held)


async def slow_bodies(host: str, port: int, connections: int, declared: int, trickle_s: float,
                      hold_s: float) -> tuple[int, int]:
    """Connections that declare a `declared`-byte body and send a byte every `trickle_s`: (opened, still held)."""
    head = (f"POST /v2/models/armorm/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    drips = min(declared - 1, int(hold_s / trickle_s) + 1)  # never more than the declared body
    return await slowloris(host, port, connections, trickle_s, hold_s, head + b"{", b" " * drips)


def big_body(size: int) -> bytes:
    """A well-formed inference request of `size` bytes: one conversation string that fills it (over one
    conversation's byte limit, the gateway refuses it once read, before Triton)."""
    shell = json.dumps({"inputs": [{"name": "messages", "shape": [1, 1], "datatype": "BYTES", "data": ["@"]}]})
    before, after = shell.split("@")
    return before.encode() + b"x" * (size - len(before) - len(after)) + after.encode()


async def big_bodies(host: str, port: int, body: bytes, count: int, timeout_s: float) -> Counter[int]:
    """`count` connections that each send `body` at once, as fast as the server reads; the status of each answer
    (0: the connection ended without one)."""
    head = (f"POST /v2/models/armorm/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    view = memoryview(body)

    async def send() -> int:
        try:
            reader, writer = await _connect(host, port)
        except OSError:
            return 0
        try:
            async with asyncio.timeout(timeout_s):
                writer.write(head)
                reading = asyncio.ensure_future(reader.readline())
                try:
                    for start in range(0, len(view), 1 << 20):  # stop sending once the server has answered
                        if reading.done():
                            break
                        writer.write(view[start:start + (1 << 20)])
                        await writer.drain()
                except OSError:  # refused and closed: its answer is in the reader
                    pass
                status_line = await reading
                return int(status_line.split()[1]) if status_line else 0
        except (OSError, TimeoutError, ValueError, IndexError):
            return 0
        finally:
            writer.close()

    return Counter(await asyncio.gather(*(send() for _ in range(count))))


async def answer_to_headers(host: str, port: int, declared: int, wait_s: float = 2.0) -> tuple[int, str]:
    """Send only the headers of a `declared`-byte inference request: (status, headers block) of an answer that
    comes before any body byte is sent, or (0, "") when none comes within `wait_s`."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write((f"POST /v2/models/armorm/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {declared}\r\n\r\n").encode())
        async with asyncio.timeout(wait_s):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        return int(head.split()[1]), head
    except (TimeoutError, asyncio.IncompleteReadError):
        return 0, ""
    finally:
        writer.close()


def run(coroutine):  # noqa: ANN001, ANN201 - a helper for synchronous callers
    return asyncio.run(coroutine)


def http_status(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers)
