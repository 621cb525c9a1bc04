"""Retries with exponential backoff and full jitter, for UNAVAILABLE only (overload, restart, shutdown).

INVALID_ARGUMENT and every other error are final: retrying a bad conversation cannot help.
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


NO_RETRIES = RetryPolicy(max_attempts=1)


def final_error(err: Exception, attempts: int, on_exhausted: Callable[[Exception, int], Exception]) -> Exception:
    """What a caller gets once retrying stops: a single attempt's own error, else on_exhausted's."""
    return err if attempts <= 1 else on_exhausted(err, attempts)


def call_with_retries(call: Callable[[], T], policy: RetryPolicy, retryable: type[Exception],
                      on_exhausted: Callable[[Exception, int], Exception],
                      sleep: Callable[[float], None] = time.sleep) -> T:
    attempt = 1
    while True:
        try:
            return call()
        except retryable as err:
            if attempt >= policy.max_attempts:
                failure = final_error(err, attempt, on_exhausted)
                raise failure from (None if failure is err else err)
            sleep(policy.delay(attempt))
            attempt += 1


async def call_with_retries_async(call: Callable[[], Awaitable[T]], policy: RetryPolicy, retryable: type[Exception],
                                  on_exhausted: Callable[[Exception, int], Exception]) -> T:
    attempt = 1
    while True:
        try:
            return await call()
        except retryable as err:
            if attempt >= policy.max_attempts:
                failure = final_error(err, attempt, on_exhausted)
                raise failure from (None if failure is err else err)
            await asyncio.sleep(policy.delay(attempt))
            attempt += 1
