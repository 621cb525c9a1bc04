"""Retries with exponential backoff and full jitter, for UNAVAILABLE only (overload, restart, shutdown).

INVALID_ARGUMENT and every other error are final: retrying a bad conversation cannot help. One rule decides
(`RetryPolicy.after`) for every client path: the blocking loop, the asyncio loop and score_batch's callbacks.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5  # 1 = no retries
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full jitter: uniform in [0, min(max, initial·multiplier^(attempt-1))] after failed attempt `attempt`."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return (rng or random).uniform(0.0, cap)

    def after(self, attempt: int, retryable: bool) -> float | None:
        """Seconds to wait before another attempt once attempt number `attempt` failed, or None: stop here."""
        return self.delay(attempt) if retryable and attempt < self.max_attempts else None


NO_RETRIES = RetryPolicy(max_attempts=1)


def call_with_retries(call: Callable[[], T], policy: RetryPolicy, retryable: type[Exception],
                      on_exhausted: Callable[[Exception, int], Exception],
                      sleep: Callable[[float], None] = time.sleep) -> T:
    attempt = 1
    while True:
        try:
            return call()
        except Exception as err:
            wait = policy.after(attempt, isinstance(err, retryable))
            if wait is None:
                failure = stopped(err, attempt, retryable, on_exhausted)
                raise failure from (None if failure is err else err)
            sleep(wait)
            attempt += 1


async def call_with_retries_async(call: Callable[[], Awaitable[T]], policy: RetryPolicy, retryable: type[Exception],
                                  on_exhausted: Callable[[Exception, int], Exception]) -> T:
    attempt = 1
    while True:
        try:
            return await call()
        except Exception as err:
            wait = policy.after(attempt, isinstance(err, retryable))
            if wait is None:
                failure = stopped(err, attempt, retryable, on_exhausted)
                raise failure from (None if failure is err else err)
            await asyncio.sleep(wait)
            attempt += 1


def stopped(err: Exception, attempts: int, retryable: type[Exception],
            on_exhausted: Callable[[Exception, int], Exception]) -> Exception:
    """The error a caller gets when retrying stops: its own for a final error or a single attempt, else
    on_exhausted's."""
    return on_exhausted(err, attempts) if isinstance(err, retryable) and attempts > 1 else err
