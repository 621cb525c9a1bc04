"""The typed result of scoring one conversation, shared by the reference and the client."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from armorm_client.contract import ENSEMBLE, OBJECTIVES
from armorm_client.steering import ObjectiveWeights


@dataclass(frozen=True)
class ArmoRMScore:
    """One conversation's outputs; the fields are the ensemble's outputs (contract.ENSEMBLE), by name."""

    score: float
    rewards: np.ndarray  # [19] fp32, in OBJECTIVES order
    gating: np.ndarray  # [19]
    coefficients: np.ndarray  # [19] = gating @ Tᵀ
    num_tokens: int
    # Outputs the server declares beyond these (a newer contract): by name, [1]-shaped ones as numbers.
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def rewards_by_objective(self) -> dict[str, float]:
        return dict(zip(OBJECTIVES, map(float, self.rewards)))

    def coefficients_by_objective(self) -> dict[str, float]:
        return dict(zip(OBJECTIVES, map(float, self.coefficients)))

    def steered(self, weights: ObjectiveWeights) -> float:
        """The caller's own mix of the objectives, Σ wᵢ·rewardᵢ (armorm_client.steering), beside `score`."""
        return weights.score(self.rewards)

    def top_objectives(self, k: int = 3) -> list[tuple[str, float]]:
        """The k objectives with the largest |coefficient| (what the model card prints)."""
        order = np.argsort(-np.abs(self.coefficients), kind="stable")[:k]
        return [(OBJECTIVES[i], float(self.coefficients[i])) for i in order]

    @classmethod
    def from_row(cls, row: dict[str, np.ndarray]) -> ArmoRMScore:
        """One row of each output tensor: [1]-shaped outputs become numbers, the others fp32 vectors."""
        values = {}
        for tensor in ENSEMBLE.outputs:
            value = row[tensor.name]
            if tensor.dims == (1,):
                values[tensor.name] = int(value[0]) if tensor.data_type.startswith("TYPE_INT") else float(value[0])
            else:
                values[tensor.name] = np.asarray(value, dtype=np.float32)
        known = {name: values.pop(name) for name in cls.__dataclass_fields__ if name in values}
        return cls(**known, extra=values)

    def to_dict(self) -> dict:
        """Numbers as they are, per-objective vectors keyed by objective name (JSON-ready)."""
        def value(name: str) -> Any:
            return getattr(self, name) if name in self.__dataclass_fields__ else self.extra[name]

        return {tensor.name: value(tensor.name) if tensor.dims == (1,)
                else dict(zip(OBJECTIVES, map(float, value(tensor.name)))) for tensor in ENSEMBLE.outputs}
