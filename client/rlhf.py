"""What the trainer integrations (armorm_client.verl, armorm_client.trl) share: settings from the environment,
clients built from them, and prompt + response → the conversation the server scores.

A trainer must never hang on the server nor train on a reward it did not get: every call has a deadline
(ARMORM_TIMEOUT_S, per attempt), UNAVAILABLE (overload, restart, unreachable) is retried ARMORM_MAX_ATTEMPTS
times with backoff and then raised, and nothing here invents a default reward.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from armorm_client.client import ArmoRMClient, AsyncArmoRMClient, TemplatedText
from armorm_client.contract import ENSEMBLE
from armorm_client.result import ArmoRMScore
from armorm_client.retry import RetryPolicy
from armorm_client.steering import OBJECTIVE_WEIGHTS_ENV, ObjectiveWeights

URL_ENV = "ARMORM_URL"
MODEL_ENV = "ARMORM_MODEL"  # another reward model of the repository: a Bradley–Terry model's or a mixture's name
API_KEY_ENV = "ARMORM_API_KEY"  # the name armorm-score reads too
TIMEOUT_ENV = "ARMORM_TIMEOUT_S"
MAX_ATTEMPTS_ENV = "ARMORM_MAX_ATTEMPTS"
MAX_IN_FLIGHT_ENV = "ARMORM_MAX_IN_FLIGHT"
SSL_ENV = "ARMORM_SSL"
ROOT_CERTIFICATES_ENV = "ARMORM_ROOT_CERTIFICATES"

DEFAULT_URL = "localhost:8001"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_MAX_IN_FLIGHT = 64


INVALID_SCORE_ENV = "ARMORM_INVALID_SCORE"


def invalid_score() -> float | None:
    """The reward a refused row gets where the trainer cannot leave a row out (verl, slime): ARMORM_INVALID_SCORE,
    or None (unset: a refused row raises)."""
    raw = os.environ.get(INVALID_SCORE_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{INVALID_SCORE_ENV}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{INVALID_SCORE_ENV}={raw!r} must be a finite number (a trainer would train on it)")
    return value


def objective_weights_from(env: Mapping[str, str]) -> ObjectiveWeights | None:
    raw = env.get(OBJECTIVE_WEIGHTS_ENV, "").strip()
    if not raw:
        return None
    try:
        return ObjectiveWeights.parse(raw)
    except ValueError as err:
        raise ValueError(f"{OBJECTIVE_WEIGHTS_ENV}: {err}") from None


def reward_of(score: ArmoRMScore, settings: Settings) -> float:
    """What a trainer trains on: the gated score, or the caller's steered one where objective weights are set."""
    return score.steered(settings.objective_weights) if settings.objective_weights else float(score.score)


class MissingPromptError(ValueError):
    """A row came without the prompt ArmoRM needs (it scores the prompt and the response together)."""


@dataclass(frozen=True)
class Settings:
    """How to reach the server. Hashable: the integrations keep one client per distinct Settings."""

    url: str = DEFAULT_URL
    model: str = ENSEMBLE.name
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S  # per attempt; DEADLINE_EXCEEDED is not retried
    max_attempts: int = DEFAULT_MAX_ATTEMPTS  # tries for UNAVAILABLE (overload, restart, unreachable)
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT  # requests of one batch in flight at once
    ssl: bool = False
    root_certificates: str | None = None  # a PEM file; None: the system's roots
    # The caller's weights over the objectives: the reward is then Σ wᵢ·rewardᵢ, the gated score logged beside it.
    objective_weights: ObjectiveWeights | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def number(name: str, kind: type, default: Any, minimum: float) -> Any:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a {kind.__name__}") from None
            if not math.isfinite(value) or value < minimum:  # "nan" and "inf" parse as floats
                raise ValueError(f"{name}={raw!r} must be a finite number, at least {minimum}")
            return value

        ssl = env.get(SSL_ENV, "").strip().lower()
        if ssl not in ("", "0", "1", "true", "false"):
            raise ValueError(f"{SSL_ENV}={ssl!r}: use 1 or 0")
        return cls(url=env.get(URL_ENV, "").strip() or DEFAULT_URL,
                   model=env.get(MODEL_ENV, "").strip() or ENSEMBLE.name,
                   api_key=env.get(API_KEY_ENV) or None,
                   timeout_s=number(TIMEOUT_ENV, float, DEFAULT_TIMEOUT_S, 0.001),
                   max_attempts=number(MAX_ATTEMPTS_ENV, int, DEFAULT_MAX_ATTEMPTS, 1),
                   max_in_flight=number(MAX_IN_FLIGHT_ENV, int, DEFAULT_MAX_IN_FLIGHT, 1),
                   ssl=ssl in ("1", "true"),
                   root_certificates=env.get(ROOT_CERTIFICATES_ENV) or None,
                   objective_weights=objective_weights_from(env))

    def __post_init__(self) -> None:
        if self.objective_weights is not None and self.model != ENSEMBLE.name:
            raise ValueError(f"{OBJECTIVE_WEIGHTS_ENV} steers ArmoRM's 19 objectives; model {self.model!r} has none "
                             "(weigh a mixture's members with its weights instead)")

    def retry(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.max_attempts)

    def client(self) -> ArmoRMClient:
        return ArmoRMClient(self.url, model=self.model, timeout_s=self.timeout_s, retry=self.retry(),
                            api_key=self.api_key, ssl=self.ssl, root_certificates=self.root_certificates)

    def async_client(self) -> AsyncArmoRMClient:
        """Must be called inside the event loop that will use it (a gRPC aio channel belongs to one loop)."""
        return AsyncArmoRMClient(self.url, model=self.model, timeout_s=self.timeout_s, retry=self.retry(),
                                 api_key=self.api_key, ssl=self.ssl, root_certificates=self.root_certificates)


def text_of(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)) and all(isinstance(block, Mapping) for block in content):
        if all(block.get("type") == "text" for block in content):
            return "".join(str(block.get("text", "")) for block in content)
        raise ValueError("ArmoRM scores text only: a message holds a non-text content block")
    raise ValueError(f"a message's content must be text, not {type(content).__name__}")


def messages_of(value: Any, role: str) -> list[dict[str, str]]:
    """A prompt or a response as messages: text becomes one turn with `role`; a list of message dicts (or a numpy
    array of them, as verl's parquet rows give) keeps its turns, each reduced to role and content."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, Mapping) or not hasattr(value, "__iter__"):
        raise ValueError(f"expected text or a list of messages, got {type(value).__name__}")
    messages = []
    for message in value:
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"a message must be a dict with 'role' and 'content', got {message!r:.200}")
        messages.append({"role": str(message["role"]), "content": text_of(message["content"])})
    if not messages:
        raise ValueError("an empty list of messages")
    return messages


# Turn markers of chat templates: a prompt string holding one is already templated, not a user turn's text.
TEMPLATE_MARKERS = ("<|begin_of_text|>", "<|start_header_id|>", "<|im_start|>", "[INST]", "<start_of_turn>")
ASSISTANT_HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"
END_OF_TURN = "<|eot_id|>"


def is_templated(prompt: Any) -> bool:
    return isinstance(prompt, str) and any(marker in prompt for marker in TEMPLATE_MARKERS)


def templated_conversation(prompt: str, response: Any) -> TemplatedText:
    """A prompt already rendered by the chat template (as verl's and TRL's plain-text datasets may hold it) + the
    response, as templated text: the server reads its turns back (and refuses another model's template, saying
    which), where wrapping it in a user turn would template it twice."""
    text = prompt
    if not text.endswith(ASSISTANT_HEADER) and "<|start_header_id|>" in text:
        if not text.rstrip().endswith(END_OF_TURN):
            raise ValueError("a templated prompt must end with its last turn's <|eot_id|> or with the assistant "
                             "header (apply_chat_template(..., add_generation_prompt=True))")
        text = text.rstrip() + ASSISTANT_HEADER
    return TemplatedText(text + text_of_response(response) + END_OF_TURN)


def text_of_response(response: Any) -> str:
    messages = messages_of(response, "assistant")
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise ValueError("after a templated prompt, the response must be one assistant turn")
    return messages[0]["content"]


def conversation(prompt: Any, response: Any) -> list[dict[str, str]] | TemplatedText:
    """prompt + response as one conversation: a text prompt is a single user turn, a text response a single
    assistant turn; a prompt already rendered by a chat template is kept as templated text. The server checks the
    rest (roles, the assistant turn last, the token limit)."""
    if is_templated(prompt):
        return templated_conversation(prompt, response)
    return messages_of(prompt, "user") + messages_of(response, "assistant")


_lock = threading.Lock()
_clients: dict[tuple[int, Settings], ArmoRMClient] = {}
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Settings, AsyncArmoRMClient]] = (
    weakref.WeakKeyDictionary())


def shared_client(settings: Settings) -> ArmoRMClient:
    """One client per process and settings (verl's workers are forked Ray processes; a channel must not cross).
    Kept here, in an importable module, so a reward function loaded from a file path pickles (verl's remote
    manager pickles it by value, and a lock cannot be pickled)."""
    key = (os.getpid(), settings)
    with _lock:
        if key not in _clients:
            _clients[key] = settings.client()
        return _clients[key]


def shared_async_client(settings: Settings) -> AsyncArmoRMClient:
    """One asyncio client per running event loop and settings (a gRPC aio channel serves the loop that made it)."""
    per_loop = _async_clients.setdefault(asyncio.get_running_loop(), {})
    if settings not in per_loop:
        per_loop[settings] = settings.async_client()
    return per_loop[settings]
