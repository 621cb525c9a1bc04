"""Who gets in, and how many at once: keys, the public model, in-flight slots, the budget of request bytes held,
the drain, and upstream calls that outlive their callers.
Shared by both listeners; lives on the gateway's event loop (no locks)."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from armorm.gateway.routes import AccessPolicy, Api, Denial
from armorm.gateway.stats import GatewayStats

T = TypeVar("T")
DRAINING_MESSAGE = "the server is shutting down and accepts no new requests; retry on another replica"
# Request checks of larger payloads run in a worker thread: walking megabytes in Python would stall every call.
OFF_LOOP_BYTES = 256 << 10


class Refusal(enum.Enum):
    """Why the gateway answers a call itself; each listener maps these to its protocol's status. The value is
    the `reason` label of the refused counter."""

    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    NOT_PUBLIC = "not_public"  # inference on an internal step of the ensemble, without the admin key
    DRAINING = "draining"
    OVERLOADED = "overloaded"
    OVER_BUDGET = "over_budget"  # the request's bytes would take the gateway over --max-buffered-bytes


Refused = tuple[Refusal, str]  # and the message for the caller
# What a refusal for memory tells callers to wait (HTTP Retry-After), in seconds.
RETRY_AFTER_S = 1
# Budget bytes an inference request is charged per byte of its body: the body is held several times over while it
# is in flight (the gateway's buffer and the text its check decodes, Triton's HTTP or gRPC frontend, the tensor
# handed to the tokenizer's process). tests/test_abuse.py measures the server's growth against the budget.
INFERENCE_CHARGE = 8


# Requests charged more than this are large: together they may fill the budget only up to LARGE_SHARE of it, so
# that a flood of large bodies leaves room for the ordinary requests of everyone else.
SMALL_CHARGE = 1 << 20
LARGE_SHARE = 0.75


def charge(api_is_inference: bool, size: int) -> int:
    """The budget a request body of `size` bytes takes."""
    return size * INFERENCE_CHARGE if api_is_inference else size


@dataclass(eq=False)
class Held:
    """Bytes of one request held against the budget. Given back once: by the request's handler, or, when it
    was handed to an upstream call (`handed_off`), when that call ends (the call holds the bytes until then)."""

    admission: Admission
    size: int = 0
    handed_off: bool = False

    def release(self) -> None:
        self.admission.stats.buffered_bytes -= self.size
        self.size = 0


@dataclass(eq=False)
class Admission:
    policy: AccessPolicy
    max_in_flight: int
    stats: GatewayStats
    draining: bool = False
    _idle: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _tasks: set[asyncio.Future[Any]] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self._idle.set()

    def authorize(self, protocol: str, api: Api, header: Callable[[str], str | None]) -> Refused | None:
        """Count the call and check its keys; (refusal, message) when they do not open `api`."""
        self.stats.requests[(protocol, api.value)] += 1
        denial: Denial | None = self.policy.check(api, header)
        if denial is None:
            return None
        refusal = Refusal.UNAUTHENTICATED if denial.missing else Refusal.PERMISSION_DENIED
        self.refuse(protocol, refusal.value)
        return refusal, denial.message

    def authorize_model(self, protocol: str, model: str, header: Callable[[str], str | None]) -> Refused | None:
        """After authorize(Api.INFERENCE): may this caller run `model`? Only the ensemble is public."""
        message = self.policy.check_model(model, header)
        if message is None:
            return None
        self.refuse(protocol, Refusal.NOT_PUBLIC.value)
        return Refusal.NOT_PUBLIC, message

    def reserve(self, protocol: str, held: Held, size: int) -> Refused | None:
        """Grow `held` to `size` bytes, or say why not: the budget is shared by every call on both listeners."""
        stats = self.stats
        more = size - held.size
        if more <= 0:
            return None
        limit = stats.buffered_bytes_limit if size <= SMALL_CHARGE else int(stats.buffered_bytes_limit * LARGE_SHARE)
        if stats.buffered_bytes + more > limit:
            self.refuse(protocol, Refusal.OVER_BUDGET.value)
            return Refusal.OVER_BUDGET, (f"the server holds {stats.buffered_bytes} bytes of requests and this one "
                                         f"needs {size}; its budget for it is {limit}: retry shortly")
        stats.buffered_bytes += more
        held.size = size
        return None

    def authorize_shared_memory(self, protocol: str, header: Callable[[str], str | None]) -> Refused | None:
        """An inference call whose tensors are in shared-memory regions: it needs the key of the shared-memory API
        (a region is the registering caller's memory; nobody else may read or write it through the server)."""
        denial = self.policy.check(Api.SHARED_MEMORY, header)
        if denial is None:
            return None
        refusal = Refusal.UNAUTHENTICATED if denial.missing else Refusal.PERMISSION_DENIED
        self.refuse(protocol, refusal.value)
        return refusal, f"tensors in shared memory: {denial.message}"

    def admit_inference(self, protocol: str) -> Refused | None:
        """Take an in-flight slot for one inference call, or say why not (draining, at the limit).

        An admitted call must reach `upstream(..., inference=True)` with no `await` in between (so a drain
        that starts now counts it), or give the slot back with `release()`.
        """
        refusal: Refused | None = None
        if self.draining:
            refusal = (Refusal.DRAINING, DRAINING_MESSAGE)
        elif self.stats.in_flight >= self.max_in_flight:
            refusal = (Refusal.OVERLOADED, f"the server has {self.stats.in_flight} requests in flight, its limit; "
                                           "retry with backoff")
        if refusal is not None:
            self.refuse(protocol, refusal[0].value)
            return refusal
        self.stats.in_flight += 1
        self._idle.clear()
        return None

    def release(self) -> None:
        """Give back a slot taken by admit_inference."""
        self.stats.in_flight -= 1
        if self.stats.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> int:
        """Wait until no inference call is inside Triton, at most `timeout` s; returns how many still are."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return self.stats.in_flight

    def refuse(self, protocol: str, reason: str) -> None:
        self.stats.refused[(protocol, reason)] += 1

    async def upstream(self, call: Awaitable[T], inference: bool, held: Held | None = None) -> T:
        """Await an upstream call that the caller's cancellation never reaches.

        If the caller goes away (client cancel, deadline, disconnect), this coroutine is cancelled but the
        upstream call keeps running to its end; its answer is dropped and counted as abandoned. An inference
        call gives back its admit_inference slot when it ends, and `held` its bytes.
        """
        task = self.track(call)
        if inference:
            task.add_done_callback(lambda _: self.release())
        if held is not None:
            held.handed_off = True
            task.add_done_callback(lambda _: held.release())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                self.stats.abandoned += 1
            raise

    def track(self, call: Awaitable[T]) -> asyncio.Future[T]:
        """Run `call` as a task of its own that lives until it ends, whoever awaits it."""
        task = asyncio.ensure_future(call)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned call's error is not worth a warning


async def off_loop_if_large(check: Callable[..., T], payload: bytes, *args: Any) -> T:
    """`check(payload, *args)`, in a worker thread when the payload is large."""
    if len(payload) < OFF_LOOP_BYTES:
        return check(payload, *args)
    return await asyncio.get_running_loop().run_in_executor(None, check, payload, *args)
