"""OpenRLHF's remote reward protocol on the public HTTP port: `POST /get_reward` with
{"query": [chat-templated prompt + response, ...], "prompts": [...], "labels": [...]} →
{"rewards": [...], "scores": [...], "extra_logs": {<objective>: [...], "gating/<objective>": [...]}}.

Each query becomes one request to the ensemble's `text` input, all sent at once, so Triton's dynamic batcher
batches them with everyone else's. Pure translation here; the listener does keys, limits and the sending.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from armorm.gateway.http_body import DEFAULT_MAX_CONVERSATION_BYTES, Finding, utf8_size
from armorm.gateway.strict_json import BodyError, Flaw, read_json
from armorm.model.conversation import json_kind
from armorm_client.contract import (
    ENSEMBLE,
    GATING,
    MEMBER_SCORES,
    MESSAGES,
    OBJECTIVES,
    REWARDS,
    SCORE,
    TEXT,
    TEXT_ENSEMBLE,
)
from armorm_client.rlhf import conversation
from armorm_client.steering import ObjectiveWeights, parse_weights

REWARD_PATH = "/get_reward"
# slime's remote reward protocol (`--rm-type remote_rm --rm-url http://host:8000/reward`): one sample per call,
# {"prompt": text or messages, "response": text, "label": ...} → {"score": ..., <objective>: ...}.
SAMPLE_REWARD_PATH = "/reward"
REWARD_PATHS = (REWARD_PATH, SAMPLE_REWARD_PATH)
# OpenRLHF ≤ 0.9 split a whole rollout batch across reward URLs: hundreds of queries per call are normal.
MAX_QUERIES = 4096
INFER_PATHS = {MESSAGES.name: f"/v2/models/{ENSEMBLE.name}/infer",
               TEXT.name: f"/v2/models/{TEXT_ENSEMBLE.name}/infer"}
_OUTPUTS = (SCORE.name, REWARDS.name, GATING.name)
Conversation = list[dict[str, str]] | str  # messages, or templated text


def parse_queries(body: bytes) -> list[str]:
    """The `query` list of an OpenRLHF reward request (`prompts` and `labels` are accepted and unused: the
    query already holds the prompt)."""
    document = read_json(body, "the body", '{"query": ["<|begin_of_text|>...", ...]}')
    if not isinstance(document, dict):
        raise BodyError(f'the body must be a JSON object with a "query" list, got a JSON {json_kind(document)}')
    queries = document.get("query")
    if isinstance(queries, str):
        queries = [queries]
    if not isinstance(queries, list):
        raise BodyError('"query" must be a list of chat-templated texts (prompt + response)')
    if len(queries) > MAX_QUERIES:
        raise BodyError(f'"query" holds {len(queries)} texts; send at most {MAX_QUERIES} per call')
    for index, query in enumerate(queries):
        if not isinstance(query, str):
            raise BodyError(f"query[{index}] must be a string, got a JSON {json_kind(query)}")
    return queries


def parse_sample(body: bytes) -> Conversation:
    """slime's sample → the conversation to score: messages (a prompt of messages, or of plain text as one user
    turn) or templated text (a prompt already rendered by a chat template); see armorm_client.rlhf.conversation."""
    document = read_json(body, "the body", '{"prompt": "...", "response": "..."}')
    if not isinstance(document, dict):
        raise BodyError(f'the body must be a JSON object with "prompt" and "response", got a JSON '
                        f"{json_kind(document)}")
    for key in ("prompt", "response"):
        if key not in document:
            raise BodyError(f'the body has no "{key}": send {{"prompt": ..., "response": ...}} (slime\'s remote_rm)')
    try:
        return conversation(document["prompt"], document["response"])
    except ValueError as err:
        raise BodyError(f"the sample is not a prompt and a response: {err}") from None


def tensor_data(item: Conversation) -> tuple[str, str]:
    """The input tensor a conversation goes to and its one string: messages (as JSON) or templated text."""
    if isinstance(item, list):
        return MESSAGES.name, json.dumps(item, ensure_ascii=False)
    return TEXT.name, item


def size_error(item: Conversation, limit: int = DEFAULT_MAX_CONVERSATION_BYTES) -> Finding | None:
    """The KServe routes' size check, applied to the one string this conversation becomes."""
    _, data = tensor_data(item)
    size = utf8_size(data, limit)
    if size <= limit:
        return None
    return Finding(f"is {size} bytes as sent to the model; the limit is {limit} bytes for one conversation "
                   "(the tokenizer's max_bytes)", Flaw.TOO_LARGE)


@dataclass(frozen=True)
class RewardTarget:
    """What the reward routes call: ArmoRM (the default), or another reward model of the repository (`?model=NAME`):
    a Bradley–Terry model, or a mixture with its members in order and the call's own `?weights=`."""

    model: str | None = None
    members: tuple[str, ...] = ()
    weights: str | None = None


ARMORM = RewardTarget()


def target_of(query_string: str, models: Mapping[str, Sequence[str]]) -> RewardTarget:
    """The call's `model` (ArmoRM's name, a Bradley–Terry model's or a mixture's) and a mixture's `weights` URL
    parameters, checked here: a bad weight fails the call at once, never every query one by one."""
    model = query_parameter(query_string, "model")
    weights = query_parameter(query_string, "weights")
    if model in (None, ENSEMBLE.name):
        model, members = None, ()
    elif model in models:
        members = tuple(models[model])
    else:
        raise BodyError(f"model {model[:64]!r}: the reward routes serve {ENSEMBLE.name!r} and this repository's "
                        f"{', '.join(map(repr, sorted(models))) or 'no other models'}")
    if weights is not None:
        if not members:
            raise BodyError("weights weigh a mixture's members (?model=MIXTURE&weights=...); for ArmoRM's own "
                            "objectives use objective_weights")
        try:
            unknown = sorted(set(parse_weights(weights)) - set(members))
        except ValueError as err:
            raise BodyError(f"weights: {err}") from None
        if unknown:
            raise BodyError(f"weights name {', '.join(map(repr, unknown))}, not members of {model} "
                            f"({', '.join(members)})")
    return RewardTarget(model, members, weights)


def infer_request(item: Conversation, target: RewardTarget = ARMORM) -> tuple[str, bytes]:
    """One conversation as a KServe v2 JSON request (path, body): templated text to armorm_text (or MIXTURE_text),
    messages (as JSON) to armorm (or MIXTURE)."""
    tensor, data = tensor_data(item)
    body: dict[str, Any] = {"inputs": [{"name": tensor, "shape": [1, 1], "datatype": "BYTES", "data": [data]}]}
    if target.model is None:
        path, outputs = INFER_PATHS[tensor], _OUTPUTS
    else:
        suffix = "_text" if tensor == TEXT.name else ""
        outputs = (SCORE.name, MEMBER_SCORES.name) if target.members else (SCORE.name,)
        path = f"/v2/models/{target.model}{suffix}/infer"
        if target.weights is not None:
            body["parameters"] = {"weights": target.weights}
    body["outputs"] = [{"name": name} for name in outputs]
    return path, json.dumps(body).encode()


def sample_response(answer: dict[str, list[float]] | None, refused_reward: float | None,
                    weights: ObjectiveWeights | None = None, target: RewardTarget = ARMORM) -> dict[str, Any]:
    """One sample's {"score", <objective>..., "gating/<objective>"...} (slime: --reward-key score); a mixture's
    {"score", <member>...}."""
    full = (reward_response([answer], refused_reward, weights) if target.model is None
            else mixture_response([answer], target, refused_reward))
    return {"score": full["rewards"][0], **{key: values[0] for key, values in full["extra_logs"].items()}}


def read_answer(answer: bytes) -> dict[str, list[float]]:
    """A KServe v2 JSON response of the ensemble → its outputs by name."""
    outputs = json.loads(answer)["outputs"]
    return {output["name"]: [float(value) for value in output["data"]] for output in outputs}


REFUSED = "refused"  # extra_logs key: 1 where a refused query got the stated reward (opt-in), else 0


GATED = "armorm_score"  # extra_logs key: ArmoRM's gated score, where the rewards are steered (objective_weights)


def query_parameter(query_string: str, name: str) -> str | None:
    """One URL parameter, given at most once (one reading: no first-or-last guess)."""
    values = parse_qs(query_string).get(name)
    if values and len(values) > 1:
        raise BodyError(f"the URL gives {name} {len(values)} times; give it once", flaw=Flaw.DUPLICATE_KEY)
    return values[0] if values else None


def objective_weights_of(query_string: str) -> ObjectiveWeights | None:
    """The call's `objective_weights` URL parameter (`name=weight,...` or `name:weight,...`), or None."""
    raw = query_parameter(query_string, "objective_weights")
    if raw is None:
        return None
    try:
        return ObjectiveWeights.parse(raw)
    except ValueError as err:
        raise BodyError(f"objective_weights: {err}") from None


def refused_reward_of(query_string: str, default: float | None) -> float | None:
    """The call's `refused_reward` URL parameter (a number) over the server's default; None: refusals fail."""
    raw = query_parameter(query_string, "refused_reward")
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BodyError(f"refused_reward must be a number, got {raw[:40]!r}") from None
    if not math.isfinite(value):
        raise BodyError("refused_reward must be a finite number")
    return value


def mixture_response(answers: Sequence[dict[str, list[float]] | None], target: RewardTarget,
                     refused_reward: float | None = None) -> dict[str, Any]:
    """Per query the model's score; a mixture's member scores in extra_logs (NaN-free: 0 for a refused query)."""
    scores = [answer[SCORE.name][0] if answer else refused_reward for answer in answers]
    extra = {member: [answer[MEMBER_SCORES.name][index] if answer else 0.0 for answer in answers]
             for index, member in enumerate(target.members)}
    if refused_reward is not None:
        extra[REFUSED] = [0.0 if answer else 1.0 for answer in answers]
    return {"rewards": scores, "scores": scores, "extra_logs": extra}


def reward_response(answers: Sequence[dict[str, list[float]] | None], refused_reward: float | None = None,
                    weights: ObjectiveWeights | None = None) -> dict[str, Any]:
    """Per query its score, objectives and gating; a None answer (a refused query, opt-in) gets `refused_reward`,
    objectives and gating 0 (a trainer averages its logs: NaN would spoil them) and extra_logs["refused"] = 1.
    With `weights` the rewards are the steered Σ wᵢ·rewardᵢ and extra_logs["armorm_score"] the gated score."""
    missing = [0.0] * len(OBJECTIVES)
    filled = [answer or {SCORE.name: [refused_reward], REWARDS.name: missing, GATING.name: missing}
              for answer in answers]
    scores = [answer[SCORE.name][0] for answer in filled]
    extra: dict[str, list[float]] = {}
    for index, objective in enumerate(OBJECTIVES):
        extra[objective] = [answer[REWARDS.name][index] for answer in filled]
    for index, objective in enumerate(OBJECTIVES):
        extra[f"gating/{objective}"] = [answer[GATING.name][index] for answer in filled]
    if refused_reward is not None:
        extra[REFUSED] = [0.0 if answer else 1.0 for answer in answers]
    if weights is not None:
        extra[GATED] = scores
        scores = [weights.score(answer[REWARDS.name]) if answer else refused_reward for answer in answers]
    return {"rewards": scores, "scores": scores, "extra_logs": extra}


def upstream_error(index: int, count: int, answer: bytes) -> str:
    """Triton's {"error": ...} for one query, named for the caller."""
    try:
        message = str(json.loads(answer).get("error", ""))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        message = answer[:200].decode("utf-8", "replace")
    return f"query[{index}] of {count}: {message}" if count > 1 else message
