"""Score conversations on a Triton server that serves the `armorm` ensemble.

`score` sends one conversation; `score_batch` keeps up to `max_in_flight` requests in flight so the
server's dynamic batcher can group them; `AsyncArmoRMClient` does the same under asyncio.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from armorm import contract
from armorm.result import ArmoRMScore

Messages = Sequence[dict[str, str]]
OUTPUTS = tuple(t.name for t in contract.ENSEMBLE.outputs)


class ArmoRMError(Exception):
    """Base of the client's errors; `status` is the gRPC status name when the server answered."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class InvalidConversationError(ArmoRMError):
    """The server rejected the conversation (INVALID_ARGUMENT); the message says what to fix."""


class ServerUnavailableError(ArmoRMError):
    """The server is overloaded, shutting down or unreachable (UNAVAILABLE); retrying later may work."""


class ServerError(ArmoRMError):
    """Any other server-side failure."""


def to_error(err: InferenceServerException) -> ArmoRMError:
    status = str(err.status() or "")
    message = err.message() or str(err)
    if status.endswith("INVALID_ARGUMENT"):
        return InvalidConversationError(message, status)
    if status.endswith("UNAVAILABLE"):
        return ServerUnavailableError(message, status)
    return ServerError(f"{status or 'error'}: {message}", status)


def encode_messages(messages: Messages | str | bytes) -> bytes:
    """A conversation as the `messages` tensor carries it (JSON text; raw strings pass through)."""
    if isinstance(messages, bytes):
        return messages
    if isinstance(messages, str):
        return messages.encode("utf-8")
    return json.dumps(list(messages), ensure_ascii=False).encode("utf-8")


def build_inputs(messages: Messages | str | bytes, module: Any = grpcclient) -> list[Any]:
    return build_batch_inputs([messages], module)


def build_batch_inputs(conversations: Sequence[Messages | str | bytes], module: Any = grpcclient) -> list[Any]:
    """Several conversations as one request (a [n, 1] BYTES tensor)."""
    tensor = module.InferInput(contract.MESSAGES.name, [len(conversations), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[encode_messages(m)] for m in conversations], dtype=object))
    return [tensor]


def best_of_n(prompt: Messages, responses: Sequence[str]) -> list[list[dict[str, str]]]:
    """The conversations `prompt + [assistant response]`, one per response."""
    return [[*prompt, {"role": "assistant", "content": response}] for response in responses]


def build_outputs(module: Any = grpcclient) -> list[Any]:
    return [module.InferRequestedOutput(name) for name in OUTPUTS]


def decode_results(result: Any) -> list[ArmoRMScore]:
    """One ArmoRMScore per row of the response."""
    score, rewards = result.as_numpy("score"), result.as_numpy("rewards")
    gating, coefficients = result.as_numpy("gating"), result.as_numpy("coefficients")
    num_tokens = result.as_numpy("num_tokens")
    return [
        ArmoRMScore(score=float(score[row, 0]), rewards=rewards[row].astype(np.float32),
                    gating=gating[row].astype(np.float32), coefficients=coefficients[row].astype(np.float32),
                    num_tokens=int(num_tokens[row, 0]))
        for row in range(score.shape[0])
    ]


def decode_result(result: Any) -> ArmoRMScore:
    return decode_results(result)[0]


class ArmoRMClient:
    def __init__(self, url: str = "localhost:8001", model: str = contract.ENSEMBLE.name,
                 timeout_s: float | None = 120.0, **client_options: Any) -> None:
        self.model = model
        self.timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(url, **client_options)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ArmoRMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(self.model))
        except InferenceServerException:
            return False

    def score(self, messages: Messages | str | bytes) -> ArmoRMScore:
        try:
            result = self._client.infer(self.model, build_inputs(messages), outputs=build_outputs(),
                                        client_timeout=self.timeout_s)
        except InferenceServerException as err:
            raise to_error(err) from None
        return decode_result(result)

    def score_responses(self, prompt: Messages, responses: Sequence[str],
                        max_rows: int = 64) -> list[ArmoRMScore]:
        """Best-of-N: score several responses to one prompt in one request (chunks of `max_rows`).

        The server computes the shared prompt once. A bad response fails its whole request.
        """
        conversations = best_of_n(prompt, responses)
        results: list[ArmoRMScore] = []
        for start in range(0, len(conversations), max_rows):
            chunk = conversations[start: start + max_rows]
            try:
                answer = self._client.infer(self.model, build_batch_inputs(chunk), outputs=build_outputs(),
                                            client_timeout=self.timeout_s)
            except InferenceServerException as err:
                raise to_error(err) from None
            results.extend(decode_results(answer))
        return results

    def score_batch(self, conversations: Iterable[Messages | str | bytes], max_in_flight: int = 64,
                    return_exceptions: bool = False) -> list[ArmoRMScore | ArmoRMError]:
        """Score many conversations concurrently; results come back in input order.

        With return_exceptions=False the first failure is raised once all requests have finished.
        """
        items = list(conversations)
        results: list[ArmoRMScore | ArmoRMError | None] = [None] * len(items)
        slots = threading.Semaphore(max(1, max_in_flight))
        done = threading.Event()
        remaining = [len(items)]
        lock = threading.Lock()

        def finish(index: int, value: ArmoRMScore | ArmoRMError) -> None:
            results[index] = value
            slots.release()
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()

        def callback(index: int, result: Any, error: InferenceServerException | None) -> None:
            if error is not None:
                finish(index, to_error(error))
                return
            try:
                finish(index, decode_result(result))
            except Exception as err:  # noqa: BLE001 - a malformed answer fails its own slot
                finish(index, ServerError(f"could not decode the response: {err}"))

        if not items:
            return []
        for index, messages in enumerate(items):
            slots.acquire()
            try:
                self._client.async_infer(self.model, build_inputs(messages),
                                         callback=lambda result, error, i=index: callback(i, result, error),
                                         outputs=build_outputs(), client_timeout=self.timeout_s)
            except InferenceServerException as err:
                finish(index, to_error(err))
        done.wait()
        if not return_exceptions:
            for value in results:
                if isinstance(value, ArmoRMError):
                    raise value
        return results  # type: ignore[return-value]


class AsyncArmoRMClient:
    """The asyncio variant: `await score(...)`, `await score_batch(...)`."""

    def __init__(self, url: str = "localhost:8001", model: str = contract.ENSEMBLE.name,
                 timeout_s: float | None = 120.0, **client_options: Any) -> None:
        import tritonclient.grpc.aio as aioclient

        self._module = aioclient
        self.model = model
        self.timeout_s = timeout_s
        self._client = aioclient.InferenceServerClient(url, **client_options)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> AsyncArmoRMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def score(self, messages: Messages | str | bytes) -> ArmoRMScore:
        try:
            result = await self._client.infer(self.model, build_inputs(messages, self._module),
                                              outputs=build_outputs(self._module), client_timeout=self.timeout_s)
        except InferenceServerException as err:
            raise to_error(err) from None
        return decode_result(result)

    async def score_responses(self, prompt: Messages, responses: Sequence[str],
                              max_rows: int = 64) -> list[ArmoRMScore]:
        conversations = best_of_n(prompt, responses)
        results: list[ArmoRMScore] = []
        for start in range(0, len(conversations), max_rows):
            chunk = conversations[start: start + max_rows]
            try:
                answer = await self._client.infer(self.model, build_batch_inputs(chunk, self._module),
                                                  outputs=build_outputs(self._module), client_timeout=self.timeout_s)
            except InferenceServerException as err:
                raise to_error(err) from None
            results.extend(decode_results(answer))
        return results

    async def score_batch(self, conversations: Iterable[Messages | str | bytes], max_in_flight: int = 64,
                          return_exceptions: bool = False) -> list[ArmoRMScore | ArmoRMError]:
        slots = asyncio.Semaphore(max(1, max_in_flight))

        async def one(messages: Messages | str | bytes) -> ArmoRMScore:
            async with slots:
                return await self.score(messages)

        return await asyncio.gather(*(one(m) for m in conversations), return_exceptions=return_exceptions)
