"""gRPC side of the gateway: every KServe method passed through as raw bytes to Triton's Unix socket.

Only inference requests are decoded: for the model they name (the ensemble is the one public model) and to
refuse the ones Triton would let fail their batch neighbours (grpc_messages.py); everything else passes as
opaque bytes. The caller's deadline and cancellation stop at the gateway (see Admission.upstream).

Every method that takes one message is served as a client-streaming one: its handler runs when the call's
headers arrive, so keys are checked, and a full memory budget refused, before the message is read. A message
read is held against the budget (by its size) until Triton answers it.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import grpc

from armorm.gateway.admission import Admission, Held, Refusal, Refused, charge, off_loop_if_large
from armorm.gateway.config import GatewayConfig, ListenError, LoadedTls
from armorm.gateway.grpc_messages import inspect_infer_request
from armorm.gateway.routes import (
    GRPC_HEALTH_CHECK,
    GRPC_SERVICE,
    GRPC_STREAM_INFER,
    Api,
    api_of_grpc,
    forwarded_grpc_metadata,
    transient_failure,
)
from armorm.gateway.strict_json import Flaw

PROTOCOL = "grpc"
REFUSAL_CODES = {
    Refusal.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Refusal.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Refusal.NOT_PUBLIC: grpc.StatusCode.NOT_FOUND,
    Refusal.DRAINING: grpc.StatusCode.UNAVAILABLE,
    Refusal.OVERLOADED: grpc.StatusCode.UNAVAILABLE,
    Refusal.OVER_BUDGET: grpc.StatusCode.UNAVAILABLE,  # retryable, as HTTP's 503: clients retry UNAVAILABLE
}
UNREACHABLE = "the model server is not reachable (starting or restarting); retry with backoff"
# Serialized {ready: false} (inference.ServerReadyResponse / ModelReadyResponse) and
# grpc.health.v1.HealthCheckResponse{status: NOT_SERVING}: field 1, varint.
NOT_READY = b""
NOT_SERVING = b"\x08\x02"
_READINESS = (GRPC_SERVICE + "ServerReady", GRPC_SERVICE + "ModelReady")
_UPSTREAM_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # Triton restarts under the supervisor: reconnect within a second, not after gRPC's default 2-minute backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
_END = object()
Status = tuple[grpc.StatusCode, str]


class GrpcProxy(grpc.GenericRpcHandler):
    def __init__(self, admission: Admission, channel: grpc.aio.Channel, max_conversation_bytes: int) -> None:
        self.admission = admission
        self.channel = channel
        self.max_conversation_bytes = max_conversation_bytes
        self._unary_calls: dict[str, Any] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        api = api_of_grpc(details.method)
        if api is None:
            return None  # UNIMPLEMENTED
        if details.method == GRPC_STREAM_INFER:
            return grpc.stream_stream_rpc_method_handler(partial(self.stream, details.method, api))
        return grpc.stream_unary_rpc_method_handler(partial(self.unary, details.method, api))

    async def authorize(self, api: Api, context: grpc.aio.ServicerContext) -> tuple[tuple[str, Any], ...]:
        """Check the caller's keys (abort when refused); the metadata to forward."""
        metadata = tuple(context.invocation_metadata() or ())
        refusal = self.admission.authorize(PROTOCOL, api, dict(metadata).get)
        if refusal is not None:
            await context.abort(REFUSAL_CODES[refusal[0]], refusal[1])
        return forwarded_grpc_metadata(metadata)

    async def refusal_of(self, message: bytes, context: grpc.aio.ServicerContext) -> Status | None:
        """Why one inference message must not reach Triton: not a request, a model other than the ensemble
        without the admin key, or a request the ensemble must not batch with others."""
        view = await off_loop_if_large(inspect_infer_request, message, self.max_conversation_bytes)
        if view.model is None or view.ambiguity is not None:  # the model it names is then no answer to trust
            finding = view.problem if view.model is None else view.ambiguity
            self.admission.refuse(PROTOCOL, finding.flaw.value if finding else Flaw.MALFORMED.value)
            return grpc.StatusCode.INVALID_ARGUMENT, str(finding or "")
        header = dict(context.invocation_metadata() or ()).get
        refusal: Refused | None = self.admission.authorize_model(PROTOCOL, view.model, header)
        if refusal is not None:
            return REFUSAL_CODES[refusal[0]], refusal[1]
        # The steps take no checks: only admins reach them.
        if view.model in self.admission.policy.public_models and view.problem is not None:
            self.admission.refuse(PROTOCOL, view.problem.flaw.value)
            return grpc.StatusCode.INVALID_ARGUMENT, str(view.problem)
        if view.shared_memory:
            refusal = self.admission.authorize_shared_memory(PROTOCOL, header)
            if refusal is not None:
                return REFUSAL_CODES[refusal[0]], refusal[1]
        return None

    async def read_one(self, api: Api, requests: Any, context: grpc.aio.ServicerContext, held: Held) -> bytes:
        """The call's one message, held against the budget; UNAVAILABLE (retry shortly) when it does not fit (or
        when the budget is full already: then it is not read at all)."""
        stats = self.admission.stats
        if stats.buffered_bytes >= stats.buffered_bytes_limit:  # a message of any size would go over
            self.admission.refuse(PROTOCOL, Refusal.OVER_BUDGET.value)
            await context.abort(REFUSAL_CODES[Refusal.OVER_BUDGET], f"the server holds {stats.buffered_bytes} bytes "
                                "of requests, its budget: retry shortly")
        async for request in requests:
            refusal = self.admission.reserve(PROTOCOL, held, charge(api is Api.INFERENCE, len(request)))
            if refusal is not None:
                await context.abort(REFUSAL_CODES[refusal[0]], refusal[1])
            return request
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request message")

    async def unary(self, method: str, api: Api, requests: Any, context: grpc.aio.ServicerContext) -> bytes:
        metadata = await self.authorize(api, context)
        held = Held(self.admission)
        try:
            return await self.answer(method, api, await self.read_one(api, requests, context, held), metadata, context,
                                     held)
        finally:
            if not held.handed_off:
                held.release()

    async def answer(self, method: str, api: Api, request: bytes, metadata: tuple[tuple[str, Any], ...],
                     context: grpc.aio.ServicerContext, held: Held) -> bytes:
        if self.admission.draining and method in _READINESS:
            return NOT_READY
        if self.admission.draining and method == GRPC_HEALTH_CHECK:
            return NOT_SERVING
        inference = api is Api.INFERENCE
        if inference:
            status = await self.refusal_of(request, context)
            if status is not None:
                await context.abort(*status)
            refusal = self.admission.admit_inference(PROTOCOL)
            if refusal is not None:
                await context.abort(REFUSAL_CODES[refusal[0]], refusal[1])
        upstream = self._unary_calls.get(method)
        if upstream is None:
            upstream = self._unary_calls[method] = self.channel.unary_unary(method)
        try:  # no await between admit_inference and upstream(): a drain starting now counts this call
            return await self.admission.upstream(upstream(request, metadata=metadata), inference, held)
        except grpc.aio.AioRpcError as err:
            await self.abort_like(err, context)

    async def stream(self, method: str, api: Api, requests: Any, context: grpc.aio.ServicerContext) -> Any:
        """ModelStreamInfer: each message is admitted like a unary call and holds its in-flight slot until its
        answer comes back (the ensemble answers each request once). A refused message ends the stream with its
        status after the answers to the earlier ones."""
        admission = self.admission
        metadata = await self.authorize(api, context)
        call = self.channel.stream_stream(method)(metadata=metadata)
        answers: asyncio.Queue[Any] = asyncio.Queue()
        state: dict[str, Any] = {"pending": 0, "refusal": None}

        async def forward_requests() -> None:
            try:
                async for message in requests:
                    held = Held(admission)
                    try:
                        refusal = admission.reserve(PROTOCOL, held, charge(True, len(message)))
                        status = None if refusal is not None else await self.refusal_of(message, context)
                        if status is not None:
                            state["refusal"] = status
                            break
                        if refusal is None:
                            refusal = admission.admit_inference(PROTOCOL)
                        if refusal is not None:
                            state["refusal"] = (REFUSAL_CODES[refusal[0]], refusal[1])
                            break
                        state["pending"] += 1
                        await call.write(message)
                    finally:
                        held.release()  # written: gRPC holds it until sent
            except Exception:  # noqa: BLE001 - the caller went away: stop writing, let Triton finish
                pass
            finally:
                try:
                    await call.done_writing()
                except Exception:  # noqa: BLE001 - the upstream call already ended
                    pass

        async def collect_answers() -> None:
            try:
                async for answer in call:
                    if state["pending"]:
                        state["pending"] -= 1
                        admission.release()
                    answers.put_nowait(answer)
                if state["refusal"] is not None:
                    answers.put_nowait(state["refusal"])
            except grpc.aio.AioRpcError as err:
                answers.put_nowait((err.code(), err.details() or ""))
            except BaseException:  # noqa: BLE001 - e.g. the channel closed under it; the caller must not hang
                answers.put_nowait((grpc.StatusCode.UNAVAILABLE, UNREACHABLE))
            finally:
                for _ in range(state["pending"]):
                    admission.release()
                state["pending"] = 0
                answers.put_nowait(_END)

        admission.track(forward_requests())
        admission.track(collect_answers())  # runs to its end even if this caller leaves
        while (answer := await answers.get()) is not _END:
            if isinstance(answer, tuple):
                await context.abort(*answer)
            yield answer

    async def abort_like(self, err: grpc.aio.AioRpcError, context: grpc.aio.ServicerContext) -> None:
        code, details = err.code(), err.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE and ("connect" in details.lower() or "socket" in details.lower()):
            self.admission.stats.upstream_unavailable += 1
            details = UNREACHABLE
        elif transient_failure(details):
            code = grpc.StatusCode.UNAVAILABLE
        await context.abort(code, details)


class GrpcListener:
    def __init__(self, server: grpc.aio.Server, channel: grpc.aio.Channel) -> None:
        self.server, self.channel = server, channel

    def begin_drain(self) -> None:
        """Nothing to do: one HTTP/2 connection to Triton, which does not hold its shutdown."""

    async def close(self) -> None:
        await self.server.stop(grace=1.0)
        await self.channel.close()


async def start_grpc(config: GatewayConfig, admission: Admission, tls: LoadedTls | None) -> GrpcListener:
    channel = grpc.aio.insecure_channel(config.upstream.grpc_target, options=_UPSTREAM_OPTIONS)
    # Beyond this many concurrent calls gRPC answers RESOURCE_EXHAUSTED before reading more messages: memory
    # stays bounded even when callers without keys send large messages.
    limits = config.limits
    options = [
        ("grpc.so_reuseport", 0),  # never share a port with another process (a stale server, say)
        ("grpc.max_receive_message_length", config.max_request_bytes),
        ("grpc.max_send_message_length", -1),
        # Slow and idle clients: the HTTP/2 preface (and TLS) within the header timeout, calls per connection,
        # connections without calls closed, pings more often than the minimum answered with GOAWAY.
        ("grpc.http2.min_ping_interval_without_data_ms", int(limits.grpc_min_ping_interval_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 2),
    ]
    if limits.grpc_max_concurrent_streams:
        options.append(("grpc.max_concurrent_streams", limits.grpc_max_concurrent_streams))
    if limits.header_timeout_s:
        options.append(("grpc.server_handshake_timeout_ms", int(limits.header_timeout_s * 1000)))
    if limits.grpc_max_connection_idle_s:
        options.append(("grpc.max_connection_idle_ms", int(limits.grpc_max_connection_idle_s * 1000)))
    if limits.max_connections:
        options.append(("grpc.max_allowed_incoming_connections", limits.max_connections))
    if config.max_connection_age_s:
        age_ms = int(config.max_connection_age_s * 1000)
        # Calls running when the age is reached get as long again to finish before the connection closes.
        options += [("grpc.max_connection_age_ms", age_ms), ("grpc.max_connection_age_grace_ms", age_ms)]
    server = grpc.aio.server(maximum_concurrent_rpcs=config.max_in_flight + 256, options=options)
    server.add_generic_rpc_handlers((GrpcProxy(admission, channel, config.max_conversation_bytes),))
    address = f"{config.host}:{config.grpc_port}"
    try:
        if tls is None:
            server.add_insecure_port(address)
        else:
            server.add_secure_port(address, tls.grpc_credentials)
    except RuntimeError as err:
        await channel.close()
        raise ListenError(f"cannot listen for gRPC on {address}: {err} (is another server using the port?)") from None
    await server.start()
    return GrpcListener(server, channel)
