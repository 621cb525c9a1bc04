"""ArmoRM as a verl custom reward function: `custom_reward_function.path=<this file>` (name: compute_score, or
compute_score_batch with `reward_model.reward_manager=batch`, or compute_score_async for the reward loop).

verl hands a custom function only the decoded response (`solution_str`), `ground_truth`, `data_source` and the
dataset's `extra_info` column, never the prompt (its managers keep `raw_prompt` to themselves). ArmoRM scores
prompt and response together, so each row's `extra_info` must carry the prompt under `"prompt"`: the same list of
messages as the dataset's `prompt` column (or a string: one user turn). A row without it raises
MissingPromptError saying what to add; no reward is made up.

Returns {"score": ArmoRM's score, <objective>: its reward, ...} (verl logs the extra keys). Configured by the
environment (armorm_client.rlhf): ARMORM_URL, ARMORM_API_KEY, ARMORM_TIMEOUT_S, ARMORM_MAX_ATTEMPTS,
ARMORM_MAX_IN_FLIGHT, ARMORM_SSL, ARMORM_ROOT_CERTIFICATES, ARMORM_MODEL (another reward model of the
repository, e.g. a mixture: "score" is then its score); with ARMORM_OBJECTIVE_WEIGHTS
(`helpsteer-helpfulness=0.97,helpsteer-verbosity=-0.26`) "score" is the steered Σ wᵢ·rewardᵢ and
"armorm_score" the gated score. A row the server refuses (INVALID_ARGUMENT: over
the token limit, a bad role) raises InvalidConversationError, unless ARMORM_INVALID_SCORE sets the score such
rows get (then the objectives are NaN and "refused" is 1.0 in every row's dict, 0.0 for scored rows).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from armorm_client.client import ArmoRMError, InvalidConversationError, TemplatedText
from armorm_client.contract import OBJECTIVES
from armorm_client.result import ArmoRMScore
from armorm_client.rlhf import (
    INVALID_SCORE_ENV,
    MissingPromptError,
    Settings,
    conversation,
    invalid_score,
    reward_of,
    shared_async_client,
    shared_client,
)

__all__ = ["INVALID_SCORE_ENV", "compute_score", "compute_score_async", "compute_score_batch"]
PROMPT_KEY = "prompt"
REFUSED_KEY = "refused"
GATED_KEY = "armorm_score"  # ArmoRM's own (gated) score, beside a steered "score" (ARMORM_OBJECTIVE_WEIGHTS)

def _prompt_of(extra_info: Any, index: int | None = None) -> Any:
    where = "" if index is None else f" (row {index})"
    prompt = extra_info.get(PROMPT_KEY) if isinstance(extra_info, Mapping) else None
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        found = sorted(extra_info) if isinstance(extra_info, Mapping) else type(extra_info).__name__
        raise MissingPromptError(
            f"ArmoRM needs the prompt{where}, and verl passes it to a reward function only through extra_info: add "
            f"extra_info['{PROMPT_KEY}'] to each dataset row (a copy of the row's 'prompt' messages, or a string for "
            f"a single user turn). extra_info has: {found}")
    return prompt


def _conversation(solution_str: str, extra_info: Any,
                  index: int | None = None) -> list[dict[str, str]] | TemplatedText:
    try:
        return conversation(_prompt_of(extra_info, index), solution_str)
    except MissingPromptError:
        raise
    except ValueError as err:
        where = "" if index is None else f" (row {index})"
        raise MissingPromptError(f"extra_info['{PROMPT_KEY}']{where} is not a prompt: {err}") from None


def _row(value: ArmoRMScore | ArmoRMError, invalid_score: float | None, settings: Settings) -> dict[str, float]:
    steered = settings.objective_weights is not None  # then "score" is the steered one, the gated one beside it
    if isinstance(value, ArmoRMScore):
        row = {"score": reward_of(value, settings), **value.rewards_by_objective()}
        row |= {GATED_KEY: float(value.score)} if steered else {}
        return row if invalid_score is None else {**row, REFUSED_KEY: 0.0}
    if isinstance(value, InvalidConversationError) and invalid_score is not None:
        row = {"score": invalid_score, **dict.fromkeys(OBJECTIVES, math.nan), REFUSED_KEY: 1.0}
        return row | ({GATED_KEY: math.nan} if steered else {})
    raise value


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: Any = None,
                  **kwargs: Any) -> dict[str, float]:
    """One response (verl's naive reward manager). `ground_truth` and `data_source` are not used: ArmoRM judges
    the response against the prompt. Extra keyword arguments verl may pass (reward_router_address, ...) are
    ignored."""
    messages = _conversation(solution_str, extra_info)
    refused_score = invalid_score()
    settings = Settings.from_env()
    try:
        value: ArmoRMScore | ArmoRMError = shared_client(settings).score(messages)
    except InvalidConversationError as err:
        value = err
    return _row(value, refused_score, settings)


def compute_score_batch(data_sources: Sequence[Any], solution_strs: Sequence[str], ground_truths: Sequence[Any],
                        extra_infos: Sequence[Any], **kwargs: Any) -> list[dict[str, float]]:
    """verl's batch reward manager: every row in flight at once (ARMORM_MAX_IN_FLIGHT), answers in order. Every
    prompt is checked before anything is sent."""
    if len(solution_strs) != len(extra_infos):
        raise ValueError(f"{len(solution_strs)} responses but {len(extra_infos)} extra_infos")
    conversations = [_conversation(s, e, i) for i, (s, e) in enumerate(zip(solution_strs, extra_infos))]
    refused_score = invalid_score()
    settings = Settings.from_env()
    results = shared_client(settings).score_batch(conversations, max_in_flight=settings.max_in_flight,
                                            return_exceptions=True)
    return [_row(value, refused_score, settings) for value in results]


async def compute_score_async(data_source: Any, solution_str: str, ground_truth: Any, extra_info: Any = None,
                              **kwargs: Any) -> dict[str, float]:
    """compute_score for verl's asynchronous reward loop (it awaits `async def` functions, many at once)."""
    messages = _conversation(solution_str, extra_info)
    refused_score = invalid_score()
    settings = Settings.from_env()
    try:
        value: ArmoRMScore | ArmoRMError = await shared_async_client(settings).score(messages)
    except InvalidConversationError as err:
        value = err
    return _row(value, refused_score, settings)
