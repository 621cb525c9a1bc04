"""Score conversations on a Triton server that serves the `armorm` ensemble.

`score` sends one conversation; `score_batch` keeps up to `max_in_flight` requests in flight so the
server's dynamic batcher can group them; `score_responses` sends N responses to one prompt as one
request (the server computes the shared prompt once); `AsyncArmoRMClient` does the same under asyncio.
Every call has a deadline; UNAVAILABLE answers (overload, restart, shutdown) are retried with
exponential backoff and jitter; nothing else is retried.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from armorm_client import contract
from armorm_client.result import ArmoRMScore
from armorm_client.retry import RetryPolicy, call_with_retries, call_with_retries_async, stopped

Messages = Sequence[dict[str, str]]
Conversation = Messages | str | bytes
OUTPUTS = tuple(t.name for t in contract.ENSEMBLE.outputs)
# The gateway in front of tritonserver (armorm-serve with an API key) checks this gRPC metadata key.
API_KEY_HEADER = contract.GRPC_HEADER_PREFIX + contract.API_KEY_HEADER
DEFAULT_RETRY = RetryPolicy()


class ArmoRMError(Exception):
    """Base of the client's errors; `status` is the gRPC status name when the server answered."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class InvalidConversationError(ArmoRMError):
    """The server rejected the conversation (INVALID_ARGUMENT); the message says what to fix."""


class ServerUnavailableError(ArmoRMError):
    """The server is overloaded, shutting down or unreachable (UNAVAILABLE); retrying later may work."""


class RetriesExhaustedError(ServerUnavailableError):
    """Still UNAVAILABLE after every attempt the retry policy allows."""


class DeadlineExceededError(ArmoRMError):
    """No answer within the call's deadline (timeout_s)."""


class PermissionDeniedError(ArmoRMError):
    """The server restricts this API: a missing or wrong API key (see api_key)."""


class ServerError(ArmoRMError):
    """Any other server-side failure."""


def to_error(err: InferenceServerException) -> ArmoRMError:
    """The server's answer as a typed error, by its status code alone (armorm-serve's gateway gives transient
    states UNAVAILABLE and key refusals UNAUTHENTICATED / PERMISSION_DENIED)."""
    status = str(err.status() or "")
    message = err.message() or str(err)
    for suffix, kind in (("INVALID_ARGUMENT", InvalidConversationError), ("UNAVAILABLE", ServerUnavailableError),
                         ("DEADLINE_EXCEEDED", DeadlineExceededError),
                         ("PERMISSION_DENIED", PermissionDeniedError), ("UNAUTHENTICATED", PermissionDeniedError)):
        if status.endswith(suffix):
            return kind(message, status)
    return ServerError(f"{status or 'error'}: {message}", status)


def exhausted(err: Exception, attempts: int) -> RetriesExhaustedError:
    return RetriesExhaustedError(f"{err} (still unavailable after {attempts} attempts)", getattr(err, "status", None))


def encode_messages(messages: Conversation) -> bytes:
    """A conversation as the `messages` tensor carries it (JSON text; raw strings pass through)."""
    if isinstance(messages, bytes):
        return messages
    if isinstance(messages, str):
        return messages.encode("utf-8")
    return json.dumps(list(messages), ensure_ascii=False).encode("utf-8")


class TemplatedText(str):
    """A conversation already rendered by the chat template (special tokens kept): a request of these goes to the
    `text` input, one of plain messages to `messages`."""


def form_of(conversations: Sequence[Conversation], form: contract.TensorSpec) -> contract.TensorSpec:
    """`form`, or TEXT where the rows are TemplatedText (all of them: one request holds one form)."""
    templated = [isinstance(c, TemplatedText) for c in conversations]
    if any(templated):
        if not all(templated):
            raise ValueError("one request holds both templated text and messages: send them apart")
        return contract.TEXT
    return form


def build_inputs(conversations: Sequence[Conversation], module: Any = grpcclient,
                 form: contract.TensorSpec = contract.MESSAGES) -> list[Any]:
    """Conversations as one request: a [n, 1] BYTES tensor of `messages`, or of chat-templated `text` strings
    (`form`, or TemplatedText rows)."""
    form = form_of(conversations, form)
    tensor = module.InferInput(form.name, [len(conversations), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[encode_messages(m)] for m in conversations], dtype=object))
    return [tensor]


def build_outputs(module: Any = grpcclient) -> list[Any]:
    return [module.InferRequestedOutput(name) for name in OUTPUTS]


def best_of_n(prompt: Messages, responses: Sequence[str]) -> list[list[dict[str, str]]]:
    """The conversations `prompt + [assistant response]`, one per response."""
    return [[*prompt, {"role": "assistant", "content": response}] for response in responses]


def decode_results(result: Any) -> list[ArmoRMScore]:
    """One ArmoRMScore per row of the response, its fields read by name from the outputs it holds (ArmoRM's all;
    a Bradley–Terry model's `score`; a mixture's `score` and, in `extra`, `member_scores`)."""
    names = [output.name for output in result.get_response().outputs]
    arrays = {name: result.as_numpy(name) for name in names}
    rows = next(iter(arrays.values())).shape[0]
    return [ArmoRMScore.from_row({name: array[row] for name, array in arrays.items()}) for row in range(rows)]


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start: start + size] for start in range(0, len(items), size)]


# Targets that name several servers: gRPC resolves them itself (dns:///host:port re-resolves on reconnect).
BALANCED_SCHEMES = ("dns:", "ipv4:", "ipv6:")


def balanced(url: str) -> bool:
    return url.startswith(BALANCED_SCHEMES)


def round_robin_channel_args() -> list[tuple[str, Any]]:
    """tritonclient's own channel defaults plus round-robin: one subchannel per resolved address, each call to
    the next. Behind a headless Kubernetes Service this spreads one client's calls over every ready replica."""
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    return [("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.dns_min_time_between_resolutions_ms", 5000)]


class _Options:
    """What both clients share: model, deadline, retry policy, headers, TLS."""

    def __init__(self, url: str, model: str, timeout_s: float | None, retry: RetryPolicy, api_key: str | None,
                 api_key_header: str, ssl: bool, root_certificates: str | None, client_options: dict) -> None:
        self.url, self.model, self.timeout_s, self.retry = url, model, timeout_s, retry
        # Templated text goes to the text ensemble (armorm_text, a mixture's NAME_text).
        self.text_model = contract.TEXT_ENSEMBLE.name if model == contract.ENSEMBLE.name else f"{model}_text"
        # ArmoRM's outputs by name; another reward model (Bradley–Terry, a mixture) answers all of its own.
        self.armorm = model in (contract.ENSEMBLE.name, contract.TEXT_ENSEMBLE.name)
        self.headers = {api_key_header: api_key} if api_key else None
        self.connect = dict(client_options)
        if balanced(url) and "channel_args" not in self.connect:
            self.connect["channel_args"] = round_robin_channel_args()
        if ssl:
            self.connect.update(ssl=True, root_certificates=root_certificates)

    def model_for(self, conversations: Sequence[Conversation],
                  form: contract.TensorSpec = contract.MESSAGES) -> str:
        return self.text_model if form_of(conversations, form) is contract.TEXT else self.model


class ArmoRMClient:
    def __init__(self, url: str = "localhost:8001", model: str = contract.ENSEMBLE.name,
                 timeout_s: float | None = 120.0, retry: RetryPolicy = DEFAULT_RETRY, api_key: str | None = None,
                 api_key_header: str = API_KEY_HEADER, ssl: bool = False, root_certificates: str | None = None,
                 **client_options: Any) -> None:
        self._options = _Options(url, model, timeout_s, retry, api_key, api_key_header, ssl, root_certificates,
                                 client_options)
        self._client = grpcclient.InferenceServerClient(url, **self._options.connect)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ArmoRMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def is_ready(self) -> bool:
        """Server live and the ensemble ready (health APIs stay open when the others are restricted)."""
        try:
            return bool(self._client.is_server_ready(headers=self._options.headers)
                        and self._client.is_model_ready(self._options.model, headers=self._options.headers))
        except InferenceServerException:
            return False

    def _infer_once(self, conversations: Sequence[Conversation],
                    form: contract.TensorSpec = contract.MESSAGES) -> list[ArmoRMScore]:
        try:
            result = self._client.infer(self._options.model_for(conversations, form),
                                        build_inputs(conversations, form=form),
                                        outputs=build_outputs() if self._options.armorm else None,
                                        client_timeout=self._options.timeout_s, headers=self._options.headers)
        except InferenceServerException as err:
            raise to_error(err) from None
        return decode_results(result)

    def _infer(self, conversations: Sequence[Conversation],
               form: contract.TensorSpec = contract.MESSAGES) -> list[ArmoRMScore]:
        return call_with_retries(lambda: self._infer_once(conversations, form), self._options.retry,
                                 ServerUnavailableError, exhausted)

    def score(self, messages: Conversation) -> ArmoRMScore:
        return self._infer([messages])[0]

    def score_texts(self, texts: Sequence[str]) -> list[ArmoRMScore]:
        """Conversations already rendered by the chat template (special tokens kept), as RLHF trainers hold them,
        in one request; scored on exactly their tokens."""
        return self._infer(list(texts), contract.TEXT)

    def score_responses(self, prompt: Messages, responses: Sequence[str], max_rows: int = 64) -> list[ArmoRMScore]:
        """Best-of-N: several responses to one prompt in one request (chunks of `max_rows`).

        The server computes the shared prompt once. A bad response fails its whole request.
        """
        return [r for chunk in chunks(best_of_n(prompt, responses), max_rows) for r in self._infer(chunk)]

    def score_batch(self, conversations: Iterable[Conversation], max_in_flight: int = 64,
                    return_exceptions: bool = False) -> list[ArmoRMScore | ArmoRMError]:
        """Score many conversations concurrently; results come back in input order.

        With return_exceptions=False the first failure is raised once all requests have finished.
        """
        results = [value if isinstance(value, ArmoRMError) else value[0]
                   for value in self.score_stream(([c] for c in conversations), max_in_flight)]
        if not return_exceptions:
            for value in results:
                if isinstance(value, ArmoRMError):
                    raise value
        return results

    def score_stream(self, requests: Iterable[Sequence[Conversation] | Exception],
                     window: int = 64) -> Iterator[list[ArmoRMScore] | Exception]:
        """One request per item (its conversations scored together: rows sharing a prompt compute it once),
        answered in input order as the answers arrive, with at most `window` requests in flight.

        Memory stays bounded by the window whatever the length of `requests` (read lazily). A request that
        fails yields its error (UNAVAILABLE is retried first, as everywhere); an item that is already an
        exception (input that could not become a request) is yielded in its place, unsent. Stopping the
        iteration (break, Ctrl-C) sends nothing more; requests already in flight finish on the server and are
        dropped.
        """
        policy = self._options.retry
        pending: deque[_Pending] = deque()

        def submit(slot: _Pending, attempt: int) -> None:
            try:
                self._client.async_infer(
                    self._options.model_for(slot.conversations), build_inputs(slot.conversations),
                    callback=lambda result, error: answered(slot, attempt, result, error),
                    outputs=build_outputs() if self._options.armorm else None,
                    client_timeout=self._options.timeout_s, headers=self._options.headers)
            except InferenceServerException as err:
                answered(slot, attempt, None, err)
            except Exception as err:  # noqa: BLE001 - e.g. a conversation json cannot encode: fail its slot only
                slot.finish(InvalidConversationError(f"could not send the request: {err}"))

        def answered(slot: _Pending, attempt: int, result: Any, error: InferenceServerException | None) -> None:
            if error is None:
                try:
                    slot.finish(decode_results(result))
                except Exception as err:  # noqa: BLE001 - a malformed answer fails its own slot
                    slot.finish(ServerError(f"could not decode the response: {err}"))
                return
            failure = to_error(error)
            wait = policy.after(attempt, isinstance(failure, ServerUnavailableError))
            if wait is not None:
                timer = threading.Timer(wait, submit, (slot, attempt + 1))
                timer.daemon = True
                timer.start()
                return
            slot.finish(stopped(failure, attempt, ServerUnavailableError, exhausted))

        for conversations in requests:
            if len(pending) >= max(1, window):
                yield pending.popleft().wait()
            if isinstance(conversations, Exception):
                slot = _Pending([])
                slot.finish(conversations)
            else:
                slot = _Pending(list(conversations))
                submit(slot, 1)
            pending.append(slot)
        while pending:
            yield pending.popleft().wait()


class _Pending:
    """One request of score_stream: filled by a gRPC callback thread, read by the iterating thread."""

    __slots__ = ("conversations", "value", "_done")

    def __init__(self, conversations: list[Conversation]) -> None:
        self.conversations = conversations
        self.value: list[ArmoRMScore] | Exception | None = None
        self._done = threading.Event()

    def finish(self, value: list[ArmoRMScore] | Exception) -> None:
        self.value = value
        self.conversations = []  # the request's text is not needed any more: free it now
        self._done.set()

    def wait(self) -> list[ArmoRMScore] | Exception:
        while not self._done.wait(0.5):  # short waits: Ctrl-C is seen at once
            pass
        return self.value  # type: ignore[return-value]


class AsyncArmoRMClient:
    """The asyncio variant of ArmoRMClient, with the same calls awaited: is_ready, score, score_texts,
    score_responses, score_batch, and `async for` over score_stream."""

    def __init__(self, url: str = "localhost:8001", model: str = contract.ENSEMBLE.name,
                 timeout_s: float | None = 120.0, retry: RetryPolicy = DEFAULT_RETRY, api_key: str | None = None,
                 api_key_header: str = API_KEY_HEADER, ssl: bool = False, root_certificates: str | None = None,
                 **client_options: Any) -> None:
        import tritonclient.grpc.aio as aioclient

        self._module = aioclient
        self._options = _Options(url, model, timeout_s, retry, api_key, api_key_header, ssl, root_certificates,
                                 client_options)
        self._client = aioclient.InferenceServerClient(url, **self._options.connect)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> AsyncArmoRMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def is_ready(self) -> bool:
        """Server live and the ensemble ready (health APIs stay open when the others are restricted)."""
        try:
            return bool(await self._client.is_server_ready(headers=self._options.headers)
                        and await self._client.is_model_ready(self._options.model, headers=self._options.headers))
        except InferenceServerException:
            return False

    async def _infer_once(self, conversations: Sequence[Conversation],
                          form: contract.TensorSpec = contract.MESSAGES) -> list[ArmoRMScore]:
        try:
            result = await self._client.infer(self._options.model_for(conversations, form),
                                              build_inputs(conversations, self._module, form),
                                              outputs=build_outputs(self._module) if self._options.armorm else None,
                                              client_timeout=self._options.timeout_s, headers=self._options.headers)
        except InferenceServerException as err:
            raise to_error(err) from None
        return decode_results(result)

    async def _infer(self, conversations: Sequence[Conversation],
                     form: contract.TensorSpec = contract.MESSAGES) -> list[ArmoRMScore]:
        return await call_with_retries_async(lambda: self._infer_once(conversations, form), self._options.retry,
                                             ServerUnavailableError, exhausted)

    async def score(self, messages: Conversation) -> ArmoRMScore:
        return (await self._infer([messages]))[0]

    async def score_texts(self, texts: Sequence[str]) -> list[ArmoRMScore]:
        """As ArmoRMClient.score_texts: conversations already rendered by the chat template, in one request."""
        return await self._infer(list(texts), contract.TEXT)

    async def score_stream(self, requests: Iterable[Sequence[Conversation] | Exception],
                           window: int = 64) -> AsyncIterator[list[ArmoRMScore] | Exception]:
        """As ArmoRMClient.score_stream: one request per item, answered in input order, at most `window` in
        flight; a failed request (after retries) or an item that is already an exception is yielded in place."""

        async def one(conversations: Sequence[Conversation] | Exception) -> list[ArmoRMScore] | Exception:
            if isinstance(conversations, Exception):
                return conversations
            try:
                return await self._infer(list(conversations))
            except ArmoRMError as err:
                return err

        pending: deque[asyncio.Task] = deque()
        try:
            for conversations in requests:
                if len(pending) >= max(1, window):
                    yield await pending.popleft()
                pending.append(asyncio.ensure_future(one(conversations)))
            while pending:
                yield await pending.popleft()
        finally:
            for task in pending:  # the caller stopped early: drop what is still in flight
                task.cancel()

    async def score_responses(self, prompt: Messages, responses: Sequence[str],
                              max_rows: int = 64) -> list[ArmoRMScore]:
        results: list[ArmoRMScore] = []
        for chunk in chunks(best_of_n(prompt, responses), max_rows):
            results.extend(await self._infer(chunk))
        return results

    async def score_batch(self, conversations: Iterable[Conversation], max_in_flight: int = 64,
                          return_exceptions: bool = False) -> list[ArmoRMScore | ArmoRMError]:
        slots = asyncio.Semaphore(max(1, max_in_flight))

        async def one(messages: Conversation) -> ArmoRMScore:
            async with slots:
                return await self.score(messages)

        return await asyncio.gather(*(one(m) for m in conversations), return_exceptions=return_exceptions)
