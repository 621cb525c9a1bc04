"""Backbone runtimes: one interface, one registry, picked in one place.

A runtime turns a batch of conversations (token ids plus the two positions ArmoRM reads) into the two hidden rows
per conversation. The served backbone model, the export and the docs all read `RUNTIMES`; adding a runtime is a
module with a `create(RuntimeContext)` function and one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from armorm.model.batching import DEFAULT_MAX_BATCH_TOKENS, BackboneStats
from armorm.runtimes.parameters import Parameters

__all__ = ["DEFAULT_MAX_BATCH_TOKENS", "BackboneStats", "BackboneRuntime", "Parameters", "RuntimeContext", "RUNTIMES",
           "create_runtime"]

DEFAULT_RUNTIME = "torch_packed"


class BackboneRuntime(Protocol):
    name: str

    def run(self, input_ids: Sequence[np.ndarray], gate_positions: np.ndarray,
            reward_positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, BackboneStats]:
        """One 1-D int64 array per conversation → (gate_hidden, reward_hidden) [n, hidden] fp32 on the host, stats."""
        ...

    def describe(self) -> str:
        """One line for the log: device, dtype, kernels."""
        ...

    def free_memory(self) -> None:
        """After an out-of-memory failure: give cached device memory back before the batch is retried in halves."""
        ...


@dataclass(frozen=True)
class RuntimeContext:
    """What a runtime is built from: the backbone's version folder (weights, config.json), its checkpoint config,
    where it runs and the model's parameters (max_batch_tokens, dtype, threads, ...)."""

    version_dir: Path
    config: Mapping[str, object]
    device: str  # "cpu" or "cuda:N"
    parameters: Parameters

    @property
    def max_batch_tokens(self) -> int:
        return self.parameters.integer("max_batch_tokens", DEFAULT_MAX_BATCH_TOKENS)


# name → module holding `create(context) -> BackboneRuntime` (imported only when picked: torch or onnxruntime).
RUNTIMES: dict[str, str] = {
    "torch_packed": "armorm.runtimes.torch_packed",
    "onnxruntime": "armorm.runtimes.onnxruntime",
}


def create_runtime(name: str, context: RuntimeContext) -> BackboneRuntime:
    if name not in RUNTIMES:
        raise ValueError(f"unknown backbone runtime {name!r}; use one of {', '.join(RUNTIMES)}")
    return importlib.import_module(RUNTIMES[name]).create(context)
