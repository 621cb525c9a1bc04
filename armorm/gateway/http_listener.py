"""HTTP side of the gateway (KServe v2 REST and /metrics), forwarded to Triton's Unix sockets.

Every body is read within a size limit (counted after gzip/deflate decoding, so a small compressed bomb stops
there too), and sent on uncompressed as application/json or application/octet-stream whatever the client
declared (the form-encoded content type is what crashes Triton 2.51, upstream #5840). Inference bodies for the
ensemble are checked first, so malformed ones get 400 with a reason instead of Triton's 500.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
from aiohttp import web

from armorm.gateway.admission import Admission, Refusal, off_loop_if_large
from armorm.gateway.config import GatewayConfig, ListenError, LoadedTls
from armorm.gateway.http_body import BodyError, infer_body_error
from armorm.gateway.reward_api import (
    INFER_PATH,
    REWARD_PATH,
    infer_body,
    parse_queries,
    read_answer,
    reward_response,
    upstream_error,
)
from armorm.gateway.routes import PUBLIC_MODEL, Api, api_of_http, model_of_http_infer, transient_failure
from armorm.gateway.stats import GatewayStats
from armorm.gateway.upstream_pool import UpstreamPool

PROTOCOL = "http"
REFUSAL_STATUS = {Refusal.UNAUTHENTICATED: 401, Refusal.PERMISSION_DENIED: 403, Refusal.NOT_PUBLIC: 404,
                  Refusal.DRAINING: 503, Refusal.OVERLOADED: 503}
HEADER_LENGTH = "Inference-Header-Content-Length"
_PASSED_BACK = ("Content-Type", "Content-Encoding", HEADER_LENGTH)
# Bodies of every API but inference (repository index, load, shared memory, trace and log settings: small JSON).
SMALL_BODY_LIMIT = 64 << 10
METRICS_UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=5)
METRICS_UPSTREAM_CONNECTIONS = 2


def plain_path(path: str) -> bool:
    """No empty, "." or ".." segments: the path Triton receives (normalised by the HTTP client) is then the very
    path the route check saw."""
    return all(segment not in ("", ".", "..") for segment in path.split("/")[1:])


def error(status: int, message: str) -> web.Response:
    """Triton's own error shape: {"error": "..."}."""
    return web.json_response({"error": message}, status=status)


class HttpProxy:
    def __init__(self, config: GatewayConfig, admission: Admission, pool: UpstreamPool) -> None:
        self.config, self.admission, self.pool = config, admission, pool

    async def handle(self, request: web.Request) -> web.StreamResponse:
        admission = self.admission
        api = api_of_http(request.method, request.path) if plain_path(request.path) else None
        if api is None:
            admission.refuse(PROTOCOL, "not_found")
            return error(404, f"{request.method} {request.path[:200]} is not an API of this server")
        refusal = admission.authorize(PROTOCOL, api, request.headers.get)
        inference = api is Api.INFERENCE
        if refusal is None and inference and request.path != REWARD_PATH:
            refusal = admission.authorize_model(PROTOCOL, model_of_http_infer(request.path), request.headers.get)
        if refusal is not None:
            return error(REFUSAL_STATUS[refusal[0]], refusal[1])
        if admission.draining and api is Api.HEALTH and request.path.endswith("/ready"):
            return error(503, "the server is shutting down")
        try:
            body = await self.read_body(request, api)
        except BodyError as err:
            admission.refuse(PROTOCOL, "too_large" if err.status == 413 else "malformed")
            return error(err.status, str(err))
        if request.path == REWARD_PATH:
            return await self.rewards(body)
        headers = {"Content-Type": "application/octet-stream" if request.headers.get(HEADER_LENGTH)
                   else "application/json"}
        if HEADER_LENGTH in request.headers:
            headers[HEADER_LENGTH] = request.headers[HEADER_LENGTH]
        # The caller's own choice, or none: the HTTP client here would otherwise offer gzip on its behalf, and a
        # caller that never asked (curl without --compressed) would get a gzip body.
        headers["Accept-Encoding"] = request.headers.get("Accept-Encoding", "identity")
        if inference:
            if model_of_http_infer(request.path) == PUBLIC_MODEL:  # the steps take no checks: only admins reach them
                problem = await off_loop_if_large(infer_body_error, body, request.headers.get(HEADER_LENGTH))
                if problem is not None:
                    admission.refuse(PROTOCOL, "malformed")
                    return error(400, problem)
            refusal = admission.admit_inference(PROTOCOL)
            if refusal is not None:
                return error(REFUSAL_STATUS[refusal[0]], refusal[1])
        try:  # no await between admit_inference and upstream(): a drain starting now counts this call
            status, answer_headers, answer = await admission.upstream(
                self.pool.request(request.method, request.path_qs, headers, body), inference)
        except aiohttp.ClientError:
            admission.stats.upstream_unavailable += 1
            return error(503, "the model server is not reachable (starting or restarting); retry with backoff")
        if status in (404, 500) and transient_failure(answer.decode("utf-8", "replace")):
            status = 503  # a dead model process or unloading models: retryable, as on gRPC
        kept = {name: answer_headers[name] for name in _PASSED_BACK if name in answer_headers}
        return web.Response(status=status, body=answer, headers=kept)

    async def rewards(self, body: bytes) -> web.Response:
        """OpenRLHF's POST /get_reward: every query sent to the ensemble at once, one answer for the call. A
        refused query fails the call with its reason (a trainer must never train on a made-up reward)."""
        admission = self.admission
        try:
            queries = await off_loop_if_large(parse_queries, body)
        except BodyError as err:
            admission.refuse(PROTOCOL, "malformed")
            return error(err.status, str(err))
        refusal = admission.admit_inference(PROTOCOL)
        if refusal is not None:
            return error(REFUSAL_STATUS[refusal[0]], refusal[1])
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        calls = asyncio.gather(*(self.pool.request("POST", INFER_PATH, headers, infer_body(q)) for q in queries))
        try:  # no await since admit_inference, as in handle()
            results = await admission.upstream(calls, inference=True)
        except aiohttp.ClientError:
            admission.stats.upstream_unavailable += 1
            return error(503, "the model server is not reachable (starting or restarting); retry with backoff")
        for index, (status, _, answer) in enumerate(results):
            if status != 200:
                if status in (404, 500) and transient_failure(answer.decode("utf-8", "replace")):
                    status = 503
                return error(status, upstream_error(index, len(queries), answer))
        return web.json_response(reward_response([read_answer(answer) for _, _, answer in results]))

    async def read_body(self, request: web.Request, api: Api) -> bytes:
        """The body, decoded (gzip/deflate undone, the decoded bytes counted), within the API's limit: inference
        gets --max-request-bytes, every other API a few KiB of JSON, so open endpoints cannot make it buffer MBs."""
        limit = self.config.max_request_bytes if api is Api.INFERENCE else SMALL_BODY_LIMIT
        if request.content_length is not None and request.content_length > limit:
            raise BodyError(f"the body is {request.content_length} bytes; the limit here is {limit}", 413)
        chunks, size = [], 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise BodyError(f"the body (decompressed) exceeds the {limit}-byte limit here", 413)
            chunks.append(chunk)
        return b"".join(chunks)


class HttpListener:
    """One public HTTP port and its pool of connections to Triton."""

    def __init__(self, runner: web.AppRunner, pool: UpstreamPool) -> None:
        self.runner, self.pool = runner, pool

    def begin_drain(self) -> None:
        self.pool.retire()

    async def close(self) -> None:
        await self.runner.cleanup()
        await self.pool.close()


async def listen(app: web.Application, pool: UpstreamPool, host: str, port: int,
                 what: str, tls: ssl.SSLContext | None = None) -> HttpListener:
    """Serve `app` on host:port (HTTPS with `tls`); `pool` (its way to Triton) is closed with it, or at once
    if the port is taken."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)  # a slow upload must not hold a stop
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=False, ssl_context=tls).start()
    except OSError as err:
        await runner.cleanup()
        await pool.close()
        raise ListenError(f"cannot listen for {what} on {host}:{port}: {err.strerror} "
                          "(is another server using the port?)") from None
    return HttpListener(runner, pool)


async def start_http(config: GatewayConfig, admission: Admission, tls: LoadedTls | None) -> HttpListener:
    pool = UpstreamPool(config.upstream.http_socket, config.http_upstream_connections)
    proxy = HttpProxy(config, admission, pool)
    app = web.Application(client_max_size=config.max_request_bytes)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    context = tls.ssl_context if tls else None
    return await listen(app, pool, config.host, config.http_port, "HTTPS" if tls else "HTTP", context)


async def start_metrics(config: GatewayConfig, stats: GatewayStats) -> HttpListener:
    """GET /metrics only: Triton's metrics followed by the gateway's own."""
    pool = UpstreamPool(config.upstream.metrics_socket, METRICS_UPSTREAM_CONNECTIONS)

    async def metrics(request: web.Request) -> web.Response:
        try:
            status, _, answer = await pool.request("GET", "/metrics", {"Accept-Encoding": "identity"},
                                                 timeout=METRICS_UPSTREAM_TIMEOUT)
            triton = answer.decode("utf-8", "replace") if status == 200 else ""
        except (aiohttp.ClientError, asyncio.TimeoutError):  # a stalled Triton must not hang every scrape
            triton = ""  # restarting: the gateway's own counters still answer
        return web.Response(text=triton + stats.prometheus(), content_type="text/plain")

    async def elsewhere(request: web.Request) -> web.Response:
        return error(404, "only GET /metrics is served on this port")

    app = web.Application(client_max_size=SMALL_BODY_LIMIT)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{tail:.*}", elsewhere)
    return await listen(app, pool, config.host, config.metrics_port, "metrics")
