"""Who gets in, and how many at once: keys, the public model, in-flight slots, the drain, and upstream calls that
outlive their callers. Shared by both listeners; lives on the gateway's event loop (no locks)."""

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


Refused = tuple[Refusal, str]  # and the message for the caller


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

    async def upstream(self, call: Awaitable[T], inference: bool) -> T:
        """Await an upstream call that the caller's cancellation never reaches.

        If the caller goes away (client cancel, deadline, disconnect), this coroutine is cancelled but the
        upstream call keeps running to its end; its answer is dropped and counted as abandoned. An inference
        call gives back its admit_inference slot when it ends.
        """
        task = self.track(call)
        if inference:
            task.add_done_callback(lambda _: self.release())
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
