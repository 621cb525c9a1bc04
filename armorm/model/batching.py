"""How a backbone batch is cut and what it cost: the token budget, padding helpers and the stats record.

These live with the model because every backbone implementation (packed, ONNX) needs them; the runtimes and the
serving metrics read them from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Tokens per backbone forward (a longer conversation runs alone): the one declaration of the default.
DEFAULT_MAX_BATCH_TOKENS = 16384


@dataclass(frozen=True)
class BackboneStats:
    """What one backbone `run` did, for the metrics (armorm.serving.metrics.BackboneMetrics)."""

    conversations: int
    tokens: int  # in the conversations
    computed_tokens: int  # the backbone computed: fewer with shared prompts, more with padding
    forwards: int
    padding_tokens: int = 0
    shared_prompts: int = 0

    @property
    def saved_tokens(self) -> int:
        return self.tokens + self.padding_tokens - self.computed_tokens


def pad_right(rows: Sequence[np.ndarray], pad_value: int, dtype: type = np.int64) -> np.ndarray:
    """1-D rows of different lengths → [len(rows), longest], right-padded."""
    longest = max((row.shape[0] for row in rows), default=0)
    out = np.full((len(rows), longest), pad_value, dtype=dtype)
    for index, row in enumerate(rows):
        out[index, : row.shape[0]] = row
    return out


def token_budget_groups(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group row indices so each right-padded group holds at most `max_tokens` (rows × longest row).

    Rows are taken shortest first so neighbours pad little; a row longer than the budget gets a group
    of its own (it is run, never dropped).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for index in order:
        if current and (len(current) + 1) * lengths[index] > max_tokens:
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    return groups
