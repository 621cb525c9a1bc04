"""HTTP side of the gateway (KServe v2 REST and /metrics), forwarded to Triton's Unix sockets.

Every body is read within a size limit (counted after gzip/deflate decoding, so a small compressed bomb stops
there too), and sent on uncompressed as
application/json or application/octet-stream whatever the client declared (the form-encoded content
type is what crashes Triton 2.51, upstream #5840). Inference bodies are checked first, so malformed ones
get 400 with a reason instead of Triton's 500.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiohttp
from aiohttp import web

from armorm.gateway.gateway import Gateway, ListenError, Refusal, TlsFiles
from armorm.gateway.http_body import BodyError, infer_body_error
from armorm.gateway.routes import Api, api_of_http, transient_failure

PROTOCOL = "http"
REFUSAL_STATUS = {Refusal.UNAUTHENTICATED: 401, Refusal.PERMISSION_DENIED: 403, Refusal.DRAINING: 503,
                  Refusal.OVERLOADED: 503}
HEADER_LENGTH = "Inference-Header-Content-Length"
_PASSED_BACK = ("Content-Type", "Content-Encoding", HEADER_LENGTH)
# Bodies of every API but inference (repository index, load, shared memory, trace and log settings: small JSON).
SMALL_BODY_LIMIT = 64 << 10
METRICS_UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=5)


def plain_path(path: str) -> bool:
    """No empty, "." or ".." segments: the path Triton receives (normalised by the HTTP client) is then the very
    path the route check saw."""
    return all(segment not in ("", ".", "..") for segment in path.split("/")[1:])


def error(status: int, message: str) -> web.Response:
    """Triton's own error shape: {"error": "..."}."""
    return web.json_response({"error": message}, status=status)


class HttpProxy:
    def __init__(self, gateway: Gateway, session: aiohttp.ClientSession) -> None:
        self.gateway = gateway
        self.session = session

    async def handle(self, request: web.Request) -> web.StreamResponse:
        api = api_of_http(request.method, request.path) if plain_path(request.path) else None
        if api is None:
            self.gateway.refuse(PROTOCOL, "not_found")
            return error(404, f"{request.method} {request.path[:200]} is not an API of this server")
        refusal = self.gateway.authorize(PROTOCOL, api, request.headers.get)
        if refusal is not None:
            return error(REFUSAL_STATUS[refusal[0]], refusal[1])
        if self.gateway.draining and api is Api.HEALTH and request.path.endswith("/ready"):
            return error(503, "the server is shutting down")
        try:
            body = await self.read_body(request, api)
        except BodyError as err:
            self.gateway.refuse(PROTOCOL, "too_large" if err.status == 413 else "malformed")
            return error(err.status, str(err))
        headers = {"Content-Type": "application/octet-stream" if request.headers.get(HEADER_LENGTH)
                   else "application/json"}
        if HEADER_LENGTH in request.headers:
            headers[HEADER_LENGTH] = request.headers[HEADER_LENGTH]
        # The caller's own choice, or none: the HTTP client here would otherwise offer gzip on its behalf, and a
        # caller that never asked (curl without --compressed) would get a gzip body.
        headers["Accept-Encoding"] = request.headers.get("Accept-Encoding", "identity")
        inference = api is Api.INFERENCE
        if inference:
            problem = await self.gateway.check(infer_body_error, body, request.headers.get(HEADER_LENGTH))
            if problem is not None:
                self.gateway.refuse(PROTOCOL, "malformed")
                return error(400, problem)
            refusal = self.gateway.admit_inference(PROTOCOL)
            if refusal is not None:
                return error(REFUSAL_STATUS[refusal[0]], refusal[1])
        try:  # no await between admit_inference and upstream(): a drain starting now counts this call
            status, answer_headers, answer = await self.gateway.upstream(
                self.forward(request.method, request.path_qs, headers, body), inference)
        except aiohttp.ClientError:
            self.gateway.stats.upstream_unavailable += 1
            return error(503, "the model server is not reachable (starting or restarting); retry with backoff")
        if status in (404, 500) and transient_failure(answer.decode("utf-8", "replace")):
            status = 503  # a dead model process or unloading models: retryable, as on gRPC
        return web.Response(status=status, body=answer, headers=answer_headers)

    async def read_body(self, request: web.Request, api: Api) -> bytes:
        """The body, decoded (gzip/deflate undone, the decoded bytes counted), within the API's limit: inference
        gets --max-request-bytes, every other API a few KiB of JSON, so open endpoints cannot make it buffer MBs."""
        limit = self.gateway.config.max_request_bytes if api is Api.INFERENCE else SMALL_BODY_LIMIT
        if request.content_length is not None and request.content_length > limit:
            raise BodyError(f"the body is {request.content_length} bytes; the limit here is {limit}", 413)
        chunks, size = [], 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise BodyError(f"the body (decompressed) exceeds the {limit}-byte limit here", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def forward(self, method: str, path: str, headers: dict[str, str],
                      body: bytes) -> tuple[int, dict[str, str], bytes]:
        async with self.session.request(method, "http://triton" + path, headers=headers, data=body,
                                        auto_decompress=False) as response:
            answer = await response.read()
            kept = {name: response.headers[name] for name in _PASSED_BACK if name in response.headers}
            return response.status, kept, answer


class HttpListener:
    def __init__(self, runner: web.AppRunner, session: aiohttp.ClientSession) -> None:
        self.runner, self.session = runner, session

    async def close(self) -> None:
        await self.runner.cleanup()
        await self.session.close()


async def listen(app: web.Application, session: aiohttp.ClientSession, host: str, port: int,
                 what: str, tls: ssl.SSLContext | None = None) -> HttpListener:
    """Serve `app` on host:port (HTTPS with `tls`); `session` (its way to Triton) is closed with it, or at once
    if the port is taken."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)  # a slow upload must not hold a stop
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=False, ssl_context=tls).start()
    except OSError as err:
        await runner.cleanup()
        await session.close()
        raise ListenError(f"cannot listen for {what} on {host}:{port}: {err.strerror} "
                          "(is another server using the port?)") from None
    return HttpListener(runner, session)


def upstream_session(socket_path: Any) -> aiohttp.ClientSession:
    # No keep-alive: an idle connection would hold Triton's shutdown for its whole exit timeout, and one left
    # from before a restart fails its first reuse. A Unix-socket connect costs microseconds.
    connector = aiohttp.UnixConnector(path=str(socket_path), limit=0, force_close=True)
    return aiohttp.ClientSession(connector=connector,
                                 timeout=aiohttp.ClientTimeout(total=None))


async def start_http(gateway: Gateway) -> HttpListener:
    config = gateway.config
    session = upstream_session(config.upstream.http)
    proxy = HttpProxy(gateway, session)
    app = web.Application(client_max_size=config.max_request_bytes)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    tls = server_ssl_context(config.tls) if config.tls else None
    return await listen(app, session, config.host, config.http_port, "HTTPS" if tls else "HTTP", tls)


def server_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """HTTPS with the gRPC port's certificate; with a client CA, clients must present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert, files.key)
    if files.client_ca is not None:
        context.load_verify_locations(files.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def start_metrics(gateway: Gateway) -> HttpListener:
    """GET /metrics only: Triton's metrics followed by the gateway's own."""
    config = gateway.config
    session = upstream_session(config.upstream.metrics)

    async def metrics(request: web.Request) -> web.Response:
        try:
            async with session.get("http://triton/metrics", timeout=METRICS_UPSTREAM_TIMEOUT) as response:
                triton = await response.text()
        except (aiohttp.ClientError, asyncio.TimeoutError):  # a stalled Triton must not hang every scrape
            triton = ""  # restarting: the gateway's own counters still answer
        return web.Response(text=triton + gateway.stats.prometheus(), content_type="text/plain")

    async def elsewhere(request: web.Request) -> web.Response:
        return error(404, "only GET /metrics is served on this port")

    app = web.Application(client_max_size=SMALL_BODY_LIMIT)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{tail:.*}", elsewhere)
    return await listen(app, session, config.host, config.metrics_port, "metrics")

