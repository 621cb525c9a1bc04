"""ArmoRM as a slime reward: `--custom-rm-path armorm_client.slime.reward` (slime awaits `reward(args, sample)`
per sample, or `reward(args, samples)` for a batch), or, without this package on the training nodes, slime's own
`--rm-type remote_rm --rm-url http://rm-host:8000/reward --reward-key score` against armorm-serve's HTTP port.

A sample's `prompt` is what slime holds: text already rendered by the chat template (its default with
apply_chat_template), plain text (one user turn) or a list of messages; `response` is the generated text. The
reward is ArmoRM's score (or, with ARMORM_OBJECTIVE_WEIGHTS, the steered Σ wᵢ·rewardᵢ). Settings come from
the environment (armorm_client.rlhf: ARMORM_URL, ARMORM_API_KEY,
ARMORM_TIMEOUT_S, ...). A sample the server refuses raises InvalidConversationError, unless ARMORM_INVALID_SCORE
sets the reward such samples get; nothing else invents a reward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from armorm_client.client import ArmoRMError, InvalidConversationError
from armorm_client.result import ArmoRMScore
from armorm_client.rlhf import (
    INVALID_SCORE_ENV,
    Settings,
    conversation,
    invalid_score,
    reward_of,
    shared_async_client,
)

__all__ = ["INVALID_SCORE_ENV", "reward"]


def _reward(value: ArmoRMScore | ArmoRMError, refused_score: float | None, settings: Settings) -> float:
    if isinstance(value, ArmoRMScore):
        return reward_of(value, settings)
    if isinstance(value, InvalidConversationError) and refused_score is not None:
        return refused_score
    raise value


async def reward(args: Any, sample: Any, **kwargs: Any) -> float | list[float]:
    """One sample's reward, or every sample's for a list (slime's batched custom reward)."""
    samples: Sequence[Any] = sample if isinstance(sample, (list, tuple)) else [sample]
    conversations = [conversation(s.prompt, s.response) for s in samples]
    settings = Settings.from_env()
    results = await shared_async_client(settings).score_batch(conversations, max_in_flight=settings.max_in_flight,
                                                              return_exceptions=True)
    refused_score = invalid_score()
    rewards = [_reward(value, refused_score, settings) for value in results]
    return rewards if isinstance(sample, (list, tuple)) else rewards[0]
