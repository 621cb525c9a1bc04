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
    # ArmoRM's own outputs; empty (and num_tokens 0) for a reward model without them (Bradley–Terry, a mixture).
    rewards: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [19] fp32, in OBJECTIVES order
    gating: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [19]
    coefficients: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [19] = gating @ Tᵀ
    num_tokens: int = 0
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
        values: dict[str, Any] = {}
        for name, value in row.items():
            value = np.asarray(value)
            if value.shape == (1,):
                values[name] = int(value[0]) if value.dtype.kind in "iu" else float(value[0])
            else:
                values[name] = np.asarray(value, dtype=np.float32)
        known = {name: values.pop(name) for name in cls.__dataclass_fields__ if name in values}
        return cls(**known, extra=values)

    def to_dict(self) -> dict:
        """Numbers as they are, per-objective vectors keyed by objective name (JSON-ready). A reward model without
        ArmoRM's objectives gives its score and its own outputs (a mixture's member_scores)."""
        def value(name: str) -> Any:
            return getattr(self, name) if name in self.__dataclass_fields__ else self.extra[name]

        if not len(self.rewards):
            return {"score": self.score, **{name: v if np.isscalar(v) else [float(x) for x in v]
                                            for name, v in self.extra.items()}}
        return {tensor.name: value(tensor.name) if tensor.dims == (1,)
                else dict(zip(OBJECTIVES, map(float, value(tensor.name)))) for tensor in ENSEMBLE.outputs}
