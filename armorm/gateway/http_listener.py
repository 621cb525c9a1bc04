"""HTTP side of the gateway (KServe v2 REST and /metrics), forwarded to Triton's Unix sockets.

Every body is read within a size limit (counted after gzip/deflate decoding, so a small compressed bomb stops
there too), within the gateway's budget of bytes held (refused 503 before it is read when its Content-Length
does not fit) and with idle and minimum-rate timeouts; it is sent on uncompressed as application/json or
application/octet-stream whatever the client declared (the form-encoded content type is what crashes Triton
2.51, upstream #5840). Inference bodies for the ensemble are checked first, so malformed ones get 400 with a
reason instead of Triton's 500.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from armorm.gateway.admission import RETRY_AFTER_S, Admission, Held, Refusal, charge, off_loop_if_large
from armorm.gateway.config import ConnectionLimits, GatewayConfig, ListenError, LoadedTls
from armorm.gateway.http_body import BodyError, Finding, Flaw, check_infer_body, header_length_of
from armorm.gateway.http_connections import ConnectionGuard, GuardedProtocol
from armorm.gateway.reward_api import (
    ARMORM,
    REWARD_PATH,
    REWARD_PATHS,
    SAMPLE_REWARD_PATH,
    RewardTarget,
    infer_request,
    mixture_response,
    objective_weights_of,
    parse_queries,
    parse_sample,
    read_answer,
    refused_reward_of,
    reward_response,
    sample_response,
    size_error,
    target_of,
    upstream_error,
)
from armorm.gateway.routes import Api, api_of_http, model_of_http_infer, transient_failure
from armorm.gateway.stats import GatewayStats
from armorm.gateway.upstream_pool import UpstreamPool
from armorm_client.steering import ObjectiveWeights

PROTOCOL = "http"
REFUSAL_STATUS = {Refusal.UNAUTHENTICATED: 401, Refusal.PERMISSION_DENIED: 403, Refusal.NOT_PUBLIC: 404,
                  Refusal.DRAINING: 503, Refusal.OVERLOADED: 503, Refusal.OVER_BUDGET: 503}
HEADER_LENGTH = "Inference-Header-Content-Length"
_PASSED_BACK = ("Content-Type", "Content-Encoding", HEADER_LENGTH)
# Bodies of every API but inference (repository index, load, shared memory, trace and log settings: small JSON).
SMALL_BODY_LIMIT = 64 << 10
METRICS_UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=5)
METRICS_UPSTREAM_CONNECTIONS = 2
LINGERING_S = 5.0


# Triton's HTTP library misreads request lines that cross its 4096-byte read; real targets are far shorter.
MAX_TARGET_BYTES = 1024


def target_problem(raw_target: str) -> Finding | None:
    """Why a request target (path and query, as sent) is not forwarded: too long, or a path with
    percent-encoding, which the gateway would read decoded and Triton (which never decodes) as sent."""
    if len(raw_target) > MAX_TARGET_BYTES:
        return Finding(f"the request target is {len(raw_target)} bytes; this server takes at most {MAX_TARGET_BYTES}",
                       Flaw.TOO_LARGE)
    if "%" in raw_target.partition("?")[0]:
        return Finding("the path holds percent-encoding; send model names and paths as they are (no %XX)")
    return None


def plain_path(path: str) -> bool:
    """No empty, "." or ".." segments: the path Triton receives (normalised by the HTTP client) is then the very
    path the route check saw."""
    return all(segment not in ("", ".", "..") for segment in path.split("/")[1:])


def error(status: int, message: str) -> web.Response:
    """Triton's own error shape: {"error": "..."}; a 503 says when to retry. The reason phrase carries the message
    too (one printable ASCII line): clients such as OpenRLHF log only the status line."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return web.json_response({"error": message}, status=status, headers=headers, reason=reason_phrase(message))


def reason_phrase(message: str, limit: int = 300) -> str:
    printable = "".join(c if " " <= c <= "~" else " " for c in message)
    return " ".join(printable.split())[:limit] or "error"


class Shed(BodyError):
    """A body the gateway stops reading: over the memory budget (503) or too slow (408)."""

    def __init__(self, message: str, status: int, reason: str) -> None:
        super().__init__(message, status)
        self.reason = reason


class HttpProxy:
    def __init__(self, config: GatewayConfig, admission: Admission, pool: UpstreamPool) -> None:
        self.config, self.admission, self.pool = config, admission, pool

    async def handle(self, request: web.Request) -> web.StreamResponse:
        admission = self.admission
        target = target_problem(request.raw_path)
        if target is not None:
            admission.refuse(PROTOCOL, target.flaw.value)
            return error(414 if target.flaw is Flaw.TOO_LARGE else 400, target)
        api = api_of_http(request.method, request.path) if plain_path(request.path) else None
        if api is None:
            admission.refuse(PROTOCOL, "not_found")
            return error(404, f"{request.method} {request.path[:200]} is not an API of this server")
        refusal = admission.authorize(PROTOCOL, api, request.headers.get)
        inference = api is Api.INFERENCE
        if refusal is None and inference and request.path not in REWARD_PATHS:
            refusal = admission.authorize_model(PROTOCOL, model_of_http_infer(request.path), request.headers.get)
        if refusal is not None:
            return error(REFUSAL_STATUS[refusal[0]], refusal[1])
        if admission.draining and api is Api.HEALTH and request.path.endswith("/ready"):
            return error(503, "the server is shutting down")
        held = Held(admission)
        try:
            return await self.forward(request, api, held)
        finally:
            if not held.handed_off:
                held.release()

    async def forward(self, request: web.Request, api: Api, held: Held) -> web.StreamResponse:
        admission = self.admission
        inference = api is Api.INFERENCE
        try:
            body = await self.read_body(request, api, held)
        except Shed as err:
            if err.reason == Refusal.OVER_BUDGET.value:  # counted by reserve(); the rest is read and dropped
                return error(err.status, str(err))
            admission.refuse(PROTOCOL, err.reason)
            answer = error(err.status, str(err))  # a slow client: answered and closed, nothing more read
            await answer.prepare(request)
            await answer.write_eof()
            request.protocol.force_close()
            return answer
        except BodyError as err:
            admission.refuse(PROTOCOL, Flaw.TOO_LARGE.value if err.status == 413 else err.flaw.value)
            return error(err.status, str(err))
        if request.path == REWARD_PATH:
            return await self.rewards(body, request.query_string)
        if request.path == SAMPLE_REWARD_PATH:
            return await self.sample_reward(body, request.query_string)
        header_length = request.headers.get(HEADER_LENGTH)
        if len(request.headers.getall(HEADER_LENGTH, ())) > 1:
            admission.refuse(PROTOCOL, Flaw.DUPLICATE_KEY.value)
            return error(400, f"{HEADER_LENGTH} is given more than once; give it once")
        headers = {"Content-Type": "application/octet-stream" if header_length else "application/json"}
        if header_length is not None:  # as the check read it: Triton must split the body where the check did
            length = header_length_of(header_length)
            headers[HEADER_LENGTH] = header_length if length is None else str(length)
        # The caller's own choice, or none: the HTTP client here would otherwise offer gzip on its behalf, and a
        # caller that never asked (curl without --compressed) would get a gzip body.
        headers["Accept-Encoding"] = request.headers.get("Accept-Encoding", "identity")
        if inference:
            # The steps take no checks: only admins reach them.
            if model_of_http_infer(request.path) in admission.policy.public_models:
                check = await off_loop_if_large(check_infer_body, body, header_length,
                                                self.config.max_conversation_bytes)
                if check.problem is not None:
                    admission.refuse(PROTOCOL, check.flaw.value)
                    return error(400, check.problem)
                refusal = admission.authorize_shared_memory(PROTOCOL, request.headers.get) if check.shared_memory \
                    else None
                if refusal is not None:
                    return error(REFUSAL_STATUS[refusal[0]], refusal[1])
            refusal = admission.admit_inference(PROTOCOL)
            if refusal is not None:
                return error(REFUSAL_STATUS[refusal[0]], refusal[1])
        try:  # no await between admit_inference and upstream(): a drain starting now counts this call
            status, answer_headers, answer = await admission.upstream(
                self.pool.request(request.method, request.path_qs, headers, body), inference, held)
        except aiohttp.ClientError:
            admission.stats.upstream_unavailable += 1
            return error(503, "the model server is not reachable (starting or restarting); retry with backoff")
        if status in (404, 500) and transient_failure(answer.decode("utf-8", "replace")):
            status = 503  # a dead model process or unloading models: retryable, as on gRPC
        kept = {name: answer_headers[name] for name in _PASSED_BACK if name in answer_headers}
        return web.Response(status=status, body=answer, headers=kept)

    async def rewards(self, body: bytes, query_string: str = "") -> web.Response:
        """OpenRLHF's POST /get_reward: every query sent to the ensemble at once, one answer for the call. A
        refused query fails the call with its reason (a trainer must never train on a made-up reward), unless the
        server or the call (`?refused_reward=R`) states the reward refused queries get."""
        return await self.reward_call(body, query_string, parse_queries, one_sample=False)

    async def sample_reward(self, body: bytes, query_string: str = "") -> web.Response:
        """slime's remote_rm: POST /reward with one sample → {"score": ..., <objective>: ...}."""
        return await self.reward_call(body, query_string, parse_sample, one_sample=True)

    async def reward_call(self, body: bytes, query_string: str, parse: Callable[[bytes], Any],
                          one_sample: bool) -> web.Response:
        """Both reward routes: the body read by `parse` (queries, or one sample), the URL's options, every
        conversation scored at once, the answer in the route's shape."""
        try:
            parsed = await off_loop_if_large(parse, body)
            refused_reward, weights, target = self.reward_options(query_string)
        except BodyError as err:
            self.admission.refuse(PROTOCOL, err.flaw.value)
            return error(err.status, str(err))
        conversations = [parsed] if one_sample else parsed
        # A trainer splitting a small batch over several URLs sends some of them nothing: empty lists answer it.
        answers = await self.score_all(conversations, refused_reward, target) if conversations else []
        if isinstance(answers, web.Response):
            return answers
        if one_sample:
            return web.json_response(sample_response(answers[0], refused_reward, weights, target))
        if target.model is not None:
            return web.json_response(mixture_response(answers, target, refused_reward))
        return web.json_response(reward_response(answers, refused_reward, weights))

    def reward_options(self, query_string: str) -> tuple[float | None, ObjectiveWeights | None, RewardTarget]:
        """The reward routes' URL parameters: refused_reward, ArmoRM's objective_weights, a mixture's model and
        weights (each given at most once)."""
        target = target_of(query_string, self.config.reward_models)
        weights = objective_weights_of(query_string)
        if weights is not None and target.model is not None:
            raise BodyError("objective_weights steer ArmoRM's objectives; a mixture takes weights=member:weight,...")
        return refused_reward_of(query_string, self.config.refused_reward), weights, target

    async def score_all(self, conversations: list, refused_reward: float | None,
                        target: RewardTarget = ARMORM) -> list | web.Response:
        """Every conversation sent to the ensemble at once, each holding an in-flight slot → the answers in order
        (None for a refused one where refused_reward is set), or the error response that ends the call."""
        admission = self.admission
        if len(conversations) > admission.max_in_flight:
            admission.refuse(PROTOCOL, Flaw.TOO_LARGE.value)
            return error(400, f'"query" holds {len(conversations)} texts; this server takes at most '
                              f"{admission.max_in_flight} in flight: split the call")
        # The KServe routes' size check, before Triton: an oversized conversation fails the call (or, opted in,
        # gets the refused reward) without being sent.
        oversized = [size_error(item, self.config.max_conversation_bytes) for item in conversations]
        for index, problem in enumerate(oversized):
            if problem is not None and refused_reward is None:
                admission.refuse(PROTOCOL, problem.flaw.value)
                where = f"query[{index}] of {len(conversations)}" if len(conversations) > 1 else "the conversation"
                return error(400, f"{where} {problem}")
        sent = [index for index, problem in enumerate(oversized) if problem is None]
        # One in-flight slot per query, as if each were its own call: the limit and the drain count them all.
        for taken in range(len(sent)):
            refusal = admission.admit_inference(PROTOCOL)
            if refusal is not None:
                for _ in range(taken):
                    admission.release()
                return error(REFUSAL_STATUS[refusal[0]], refusal[1])
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        # Tracked at once (no await since the slots were taken), each frees its own.
        requests = [infer_request(conversations[index], target) for index in sent]
        calls = [admission.track(self.pool.request("POST", path, headers, body)) for path, body in requests]
        for call in calls:
            call.add_done_callback(lambda _: admission.release())
        try:
            results = await admission.upstream(asyncio.gather(*calls), inference=False)
        except aiohttp.ClientError:
            admission.stats.upstream_unavailable += 1
            return error(503, "the model server is not reachable (starting or restarting); retry with backoff")
        answers: list = [None] * len(conversations)
        for index, (status, _, answer) in zip(sent, results):
            if status == 400 and refused_reward is not None:
                continue
            if status != 200:
                if status in (404, 500) and transient_failure(answer.decode("utf-8", "replace")):
                    status = 503
                return error(status, upstream_error(index, len(conversations), answer))
            answers[index] = read_answer(answer)
        return answers

    async def read_body(self, request: web.Request, api: Api, held: Held) -> bytearray:
        """The body, decoded (gzip/deflate undone, the decoded bytes counted), within the API's limit: inference
        gets --max-request-bytes, every other API a few KiB of JSON, so open endpoints cannot make it buffer MBs.

        Its bytes are reserved from the budget before they are read (the Content-Length at once; a chunked or
        compressed body as it grows; an inference body INFERENCE_CHARGE times)
        and gathered in one buffer that grows in place: no second copy. A body
        with no byte for body_idle_timeout_s, or slower on average than min_body_rate once it has taken
        body_rate_grace_s, is shed (408)."""
        limit = self.config.max_request_bytes if api is Api.INFERENCE else SMALL_BODY_LIMIT
        limits: ConnectionLimits = self.config.limits
        declared = request.content_length
        if declared is not None and declared > limit:
            raise BodyError(f"the body is {declared} bytes; the limit here is {limit}", 413)
        inference = api is Api.INFERENCE
        self.reserve(held, charge(inference, declared or 0))
        loop = asyncio.get_running_loop()
        started, body = loop.time(), bytearray()
        while True:
            try:
                async with asyncio.timeout(limits.body_idle_timeout_s or None):
                    chunk = await request.content.readany()
            except TimeoutError:
                raise Shed(f"no body bytes came for {limits.body_idle_timeout_s:g} s", 408, "slow_body") from None
            except RequestPayloadError:  # a Content-Encoding it does not match (bad gzip, unknown coding)
                coding = request.headers.get("Content-Encoding", "")[:40]
                # Answered and closed: what is left of the body cannot be read either.
                raise Shed(f"the body is not what its Content-Encoding {coding!r} says; send it plain, gzip or "
                           "deflate", 400, Flaw.MALFORMED.value) from None
            if not chunk:
                return body
            size = len(body) + len(chunk)
            if size > limit:
                raise BodyError(f"the body (decompressed) exceeds the {limit}-byte limit here", 413)
            if charge(inference, size) > held.size:  # grow by doubling: few budget checks
                self.reserve(held, charge(inference, max(size, min(2 * size, limit))))
            body += chunk
            elapsed = loop.time() - started
            if limits.min_body_rate and elapsed > limits.body_rate_grace_s and size < limits.min_body_rate * elapsed:
                raise Shed(f"the body came at {size / elapsed:.0f} bytes/s, under the {limits.min_body_rate:g} "
                           "bytes/s this server needs", 408, "slow_body")

    def reserve(self, held: Held, size: int) -> None:
        refusal = self.admission.reserve(PROTOCOL, held, size)
        if refusal is not None:
            raise Shed(refusal[1], 503, refusal[0].value)


class HttpListener:
    """One public HTTP port and its pool of connections to Triton."""

    def __init__(self, runner: web.AppRunner, server: asyncio.Server, pool: UpstreamPool) -> None:
        self.runner, self.server, self.pool = runner, server, pool

    def begin_drain(self) -> None:
        self.pool.retire()

    async def close(self) -> None:
        self.server.close()
        await self.runner.cleanup()
        await self.pool.close()


async def listen(app: web.Application, pool: UpstreamPool, guard: ConnectionGuard, host: str, port: int,
                 what: str, tls: ssl.SSLContext | None = None) -> HttpListener:
    """Serve `app` on host:port (HTTPS with `tls`), each connection guarded by `guard` (`app` must have its
    middleware); `pool` (its way to Triton) is closed with it, or at once if the port is taken."""
    limits = guard.limits
    # shutdown_timeout: a slow upload must not hold a stop. lingering_time: the rest of a refused body (413,
    # 503) is read and dropped for at most this long so that the client sees the answer, not a reset (nginx
    # lingering_timeout 5 s); nothing of it is kept.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0, lingering_time=LINGERING_S,
                           keepalive_timeout=limits.keepalive_timeout_s)
    await runner.setup()
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(lambda: GuardedProtocol(runner.server(), guard), host, port,
                                          reuse_port=False, ssl=tls, backlog=1024,
                                          ssl_handshake_timeout=(limits.header_timeout_s or None) if tls else None)
    except OSError as err:
        await runner.cleanup()
        await pool.close()
        raise ListenError(f"cannot listen for {what} on {host}:{port}: {err.strerror} "
                          "(is another server using the port?)") from None
    return HttpListener(runner, server, pool)


async def start_http(config: GatewayConfig, admission: Admission, tls: LoadedTls | None) -> HttpListener:
    pool = UpstreamPool(config.upstream.http_socket, config.http_upstream_connections)
    proxy = HttpProxy(config, admission, pool)
    guard = ConnectionGuard("http", config.limits, admission.stats)
    app = web.Application(client_max_size=config.max_request_bytes, middlewares=[guard.middleware])
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    context = tls.ssl_context if tls else None
    return await listen(app, pool, guard, config.host, config.http_port, "HTTPS" if tls else "HTTP", context)


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

    guard = ConnectionGuard("metrics", config.limits, stats)
    app = web.Application(client_max_size=SMALL_BODY_LIMIT, middlewares=[guard.middleware])
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{tail:.*}", elsewhere)
    return await listen(app, pool, guard, config.host, config.metrics_port, "metrics")
