"""A Bradley–Terry reward model: `LlamaForSequenceClassification` with one label (sfairXC/FsfairX-LLaMA3-RM-v0.1,
Skywork-Reward-V2-Llama-3.1-8B). The backbone is ArmoRM's (Llama-3.1 RoPE scaling included); the head is one
linear row, `score.weight` [1, hidden], no bias, read at the last token; the score is the raw logit (RLHFlow's
pipeline with function_to_apply="none", Skywork's `logits[0][0]`).

Tokens as their authors' code makes them: the chat template's text with the BOS text removed, then the tokenizer
with its defaults, which add BOS back only if its post-processor does (Skywork's and Meta's do; RLHFlow's, with
[PAD] added, do not).
"""

from __future__ import annotations

import torch

from armorm.model.heads import RegressionWeights

ARCHITECTURE = "LlamaForSequenceClassification"
HEAD_PARAMETER = "score.weight"


def score_weights(state: dict[str, torch.Tensor], hidden_size: int) -> RegressionWeights:
    """`score.weight` [1, hidden] as a one-row regression head: the served score is armorm.model.heads.regression,
    ArmoRM's own head math, with one output."""
    if HEAD_PARAMETER not in state:
        raise ValueError(f"a Bradley–Terry checkpoint holds {HEAD_PARAMETER}; this one has none")
    weight = state[HEAD_PARAMETER]
    if tuple(weight.shape) != (1, hidden_size):
        raise ValueError(f"{HEAD_PARAMETER} is {tuple(weight.shape)}; a one-label model has [1, {hidden_size}]")
    extra = sorted(name for name in state if not name.startswith("model.") and name != HEAD_PARAMETER)
    if extra:
        raise ValueError(f"unexpected head parameters {extra[:4]}: not a one-label sequence classifier")
    return RegressionWeights(weight.float().contiguous())
