"""ArmoRM as a TRL reward function: `GRPOTrainer(..., reward_funcs=ArmoRMReward())` (or AsyncArmoRMReward(), which
TRL awaits next to its other async reward functions).

Each call scores the whole batch (B×G completions) concurrently, up to ARMORM_MAX_IN_FLIGHT requests in flight.
Conversational rows (lists of message dicts) are scored as prompt + completion messages; plain-text rows as one
user turn (the prompt) and one assistant turn (the completion), the way ArmoRM was trained. A row the server
refuses (INVALID_ARGUMENT: over the token limit, a role it does not know) gets None, which TRL leaves out of that
row's reward; anything else (unreachable or overloaded past the retries, a deadline, a wrong API key) raises
ArmoRMError, so training stops instead of going on without rewards. With `log_metric`, the batch's mean reward per
objective is logged as `<name>/<objective>`, and the refused count as `<name>/refused`.

Settings come from the arguments, else the environment (armorm_client.rlhf: ARMORM_URL, ARMORM_API_KEY,
ARMORM_TIMEOUT_S, ARMORM_MAX_ATTEMPTS, ARMORM_MAX_IN_FLIGHT, ARMORM_SSL, ARMORM_ROOT_CERTIFICATES).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from armorm_client.client import ArmoRMClient, ArmoRMError, AsyncArmoRMClient, InvalidConversationError
from armorm_client.contract import OBJECTIVES
from armorm_client.result import ArmoRMScore
from armorm_client.rlhf import Settings, conversation, reward_of
from armorm_client.steering import ObjectiveWeights

logger = logging.getLogger(__name__)


class _RewardBase:
    """The settings, the name TRL logs the reward under, and turning a batch's answers into rewards."""

    def __init__(self, url: str | None = None, *, api_key: str | None = None, timeout_s: float | None = None,
                 max_attempts: int | None = None, max_in_flight: int | None = None, name: str = "armorm",
                 objective_weights: Mapping[str, float] | ObjectiveWeights | None = None,
                 model: str | None = None) -> None:
        if objective_weights is not None and not isinstance(objective_weights, ObjectiveWeights):
            objective_weights = ObjectiveWeights.of(objective_weights)
        given = {"url": url, "api_key": api_key, "timeout_s": timeout_s, "max_attempts": max_attempts,
                 "max_in_flight": max_in_flight, "objective_weights": objective_weights, "model": model}
        self.settings = replace(Settings.from_env(), **{k: v for k, v in given.items() if v is not None})
        self.__name__ = name  # TRL names the reward's metrics and columns by it
        self._disconnected()

    def _disconnected(self) -> None:
        """No connection yet: the first call opens one."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings!r}, name={self.__name__!r})"

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (TRL and multiprocessing may copy reward functions): the connection is rebuilt on first use."""
        return {"settings": self.settings, "__name__": self.__name__}  # not the coroutine mark: set again on load

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._disconnected()

    @staticmethod
    def conversations(prompts: Sequence[Any], completions: Sequence[Any]) -> list[list[dict[str, str]]]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        return [conversation(p, c) for p, c in zip(prompts, completions)]

    def rewards(self, results: Sequence[ArmoRMScore | ArmoRMError],
                log_metric: Callable[[str, float], None] | None) -> list[float | None]:
        failures = [r for r in results if not isinstance(r, (ArmoRMScore, InvalidConversationError))]
        if failures:
            first = failures[0]
            if not isinstance(first, ArmoRMError):
                raise first
            raise type(first)(f"{len(failures)} of {len(results)} completions got no reward from the ArmoRM server "
                              f"at {self.settings.url}: {first}", first.status) from first
        scored = [r for r in results if isinstance(r, ArmoRMScore)]
        refused = [r for r in results if isinstance(r, InvalidConversationError)]
        if refused:
            logger.warning("ArmoRM refused %d of %d completions (their reward is None); the first: %s",
                           len(refused), len(results), refused[0])
        if log_metric is not None:
            if scored:
                means = np.mean([r.rewards for r in scored], axis=0)
                for objective, mean in zip(OBJECTIVES, means):
                    log_metric(f"{self.__name__}/{objective}", float(mean))
                if self.settings.objective_weights is not None:  # the reward is steered: the gated score beside it
                    log_metric(f"{self.__name__}/armorm_score", float(np.mean([r.score for r in scored])))
            log_metric(f"{self.__name__}/refused", float(len(refused)))
        return [reward_of(r, self.settings) if isinstance(r, ArmoRMScore) else None for r in results]


class ArmoRMReward(_RewardBase):
    """A synchronous TRL reward function: one blocking call per batch, the batch's requests sent concurrently."""

    def _disconnected(self) -> None:
        self._client: ArmoRMClient | None = None
        self._owner = -1
        self._lock = threading.Lock()

    def client(self) -> ArmoRMClient:
        with self._lock:
            if self._client is None or self._owner != os.getpid():  # a forked copy opens its own channel
                self._client, self._owner = self.settings.client(), os.getpid()
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None and self._owner == os.getpid():
                self._client.close()
            self._client = None

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None,
                 trainer_state: Any = None, log_extra: Callable[..., None] | None = None,
                 log_metric: Callable[[str, float], None] | None = None, **kwargs: Any) -> list[float | None]:
        conversations = self.conversations(prompts, completions)
        results = self.client().score_batch(conversations, max_in_flight=self.settings.max_in_flight,
                                            return_exceptions=True)
        return self.rewards(results, log_metric)


class AsyncArmoRMReward(_RewardBase):
    """The asyncio form: TRL awaits it on its own event loop, concurrently with its other async reward functions.

    TRL tells async reward functions apart with inspect.iscoroutinefunction (some versions) or by the awaitable a
    call returns (others). The first is false for a callable object, so on Python ≥ 3.12 the instance is marked
    as a coroutine function; on 3.11 such TRL versions call it as a plain function (use ArmoRMReward there)."""

    def _disconnected(self) -> None:
        self._client: AsyncArmoRMClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        if hasattr(inspect, "markcoroutinefunction"):  # Python ≥ 3.12; kept across pickling (set again here)
            inspect.markcoroutinefunction(self)

    def client(self) -> AsyncArmoRMClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:  # a gRPC aio channel serves the loop that made it
            self._client, self._loop = self.settings.async_client(), loop
        return self._client

    async def close(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.close()
        self._client = self._loop = None

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None,
                       trainer_state: Any = None, log_extra: Callable[..., None] | None = None,
                       log_metric: Callable[[str, float], None] | None = None, **kwargs: Any) -> list[float | None]:
        conversations = self.conversations(prompts, completions)
        results = await self.client().score_batch(conversations, max_in_flight=self.settings.max_in_flight,
                                                  return_exceptions=True)
        return self.rewards(results, log_metric)
