"""The typed result of scoring one conversation, shared by the reference and the client."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from armorm_client.contract import OBJECTIVES


@dataclass(frozen=True)
class ArmoRMScore:
    score: float
    rewards: np.ndarray  # [19] fp32, in OBJECTIVES order
    gating: np.ndarray  # [19]
    coefficients: np.ndarray  # [19] = gating @ Tᵀ
    num_tokens: int

    def rewards_by_objective(self) -> dict[str, float]:
        return dict(zip(OBJECTIVES, map(float, self.rewards)))

    def coefficients_by_objective(self) -> dict[str, float]:
        return dict(zip(OBJECTIVES, map(float, self.coefficients)))

    def top_objectives(self, k: int = 3) -> list[tuple[str, float]]:
        """The k objectives with the largest |coefficient| (what the model card prints)."""
        order = np.argsort(-np.abs(self.coefficients), kind="stable")[:k]
        return [(OBJECTIVES[i], float(self.coefficients[i])) for i in order]

    def to_dict(self) -> dict:
        return {
            "score": self.score,
            "num_tokens": self.num_tokens,
            "rewards": self.rewards_by_objective(),
            "gating": dict(zip(OBJECTIVES, map(float, self.gating))),
            "coefficients": self.coefficients_by_objective(),
        }
