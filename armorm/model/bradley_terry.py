"""A Bradley–Terry reward model: `LlamaForSequenceClassification` with one label (sfairXC/FsfairX-LLaMA3-RM-v0.1,
Skywork-Reward-V2-Llama-3.1-8B). The backbone is ArmoRM's (Llama-3.1 RoPE scaling included); the head is one
linear row, `score.weight` [1, hidden], no bias, read at the last token; the score is the raw logit (RLHFlow's
pipeline with function_to_apply="none", Skywork's `logits[0][0]`).

Tokens as their authors' code makes them: the chat template's text with the BOS text removed, then the tokenizer
with its defaults, which add BOS back only if its post-processor does (Skywork's and Meta's do; RLHFlow's, with
[PAD] added, do not).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ARCHITECTURE = "LlamaForSequenceClassification"
HEAD_PARAMETER = "score.weight"


@dataclass(frozen=True)
class ScoreWeights:
    weight: torch.Tensor  # [1, hidden] fp32

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], hidden_size: int) -> ScoreWeights:
        if HEAD_PARAMETER not in state:
            raise ValueError(f"a Bradley–Terry checkpoint holds {HEAD_PARAMETER}; this one has none")
        weight = state[HEAD_PARAMETER]
        if tuple(weight.shape) != (1, hidden_size):
            raise ValueError(f"{HEAD_PARAMETER} is {tuple(weight.shape)}; a one-label model has [1, {hidden_size}]")
        extra = sorted(name for name in state if not name.startswith("model.") and name != HEAD_PARAMETER)
        if extra:
            raise ValueError(f"unexpected head parameters {extra[:4]}: not a one-label sequence classifier")
        return cls(weight.float().contiguous())

    def save(self, path: Path) -> None:
        save_file({HEAD_PARAMETER: self.weight}, str(path))

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu") -> ScoreWeights:
        return cls(load_file(str(path))[HEAD_PARAMETER].to(device))


def score(reward_hidden: torch.Tensor, weights: ScoreWeights) -> torch.Tensor:
    """[n, hidden] → [n, 1] fp32 logits (the head in fp32, as the served heads are)."""
    return reward_hidden.float() @ weights.weight.T
