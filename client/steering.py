"""Steerable ArmoRM: a caller's weights over the 19 objectives, and the score they give, Σ wᵢ·rewardᵢ.

ArmoRM's own score mixes the objectives with weights its gating network picks per prompt. A caller with a
preference of its own (the DPA paper's direction over helpfulness and verbosity, a product's "be concise")
gives weights by objective name instead; the steered score is the plain weighted sum of the objective rewards the
server already returns, beside the gated score. Weights are used as given (not normalised), as TRL and verl
weight their rewards.

Written as `name=weight` pairs separated by commas (`helpsteer-helpfulness=0.97,helpsteer-verbosity=-0.26`),
the form of the ARMORM_OBJECTIVE_WEIGHTS variable and of /get_reward's `objective_weights` URL parameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from armorm_client.contract import OBJECTIVES

OBJECTIVE_WEIGHTS_ENV = "ARMORM_OBJECTIVE_WEIGHTS"
HELPFULNESS, VERBOSITY = "helpsteer-helpfulness", "helpsteer-verbosity"


@dataclass(frozen=True)
class ObjectiveWeights:
    """Weights by objective name (objectives not named weigh 0). Hashable: part of the trainer settings."""

    pairs: tuple[tuple[str, float], ...]

    def __post_init__(self) -> None:
        if not self.pairs:
            raise ValueError("give at least one objective weight, e.g. helpsteer-helpfulness=1")
        names = [name for name, _ in self.pairs]
        for name, weight in self.pairs:
            if name not in OBJECTIVES:
                raise ValueError(f"{name[:64]!r} is not one of ArmoRM's objectives: {', '.join(OBJECTIVES)}")
            if not math.isfinite(weight):
                raise ValueError(f"the weight of {name} must be a finite number, got {weight}")
        if len(set(names)) != len(names):
            raise ValueError("an objective is weighted twice; give each once")

    @classmethod
    def of(cls, weights: Mapping[str, float]) -> ObjectiveWeights:
        return cls(tuple((str(name), float(weight)) for name, weight in weights.items()))

    @classmethod
    def parse(cls, text: str) -> ObjectiveWeights:
        """`name=weight,name=weight` (':' works too), as in ARMORM_OBJECTIVE_WEIGHTS."""
        return cls(tuple(parse_weights(text).items()))

    @classmethod
    def direction(cls, degrees: float) -> ObjectiveWeights:
        """The DPA paper's preference direction: helpfulness cos θ, verbosity sin θ (θ = -15°: a little less
        verbose; 0°: helpfulness alone)."""
        angle = math.radians(degrees)
        return cls(((HELPFULNESS, math.cos(angle)), (VERBOSITY, math.sin(angle))))

    def vector(self) -> np.ndarray:
        """[19] fp64 in OBJECTIVES order."""
        vector = np.zeros(len(OBJECTIVES))
        for name, weight in self.pairs:
            vector[OBJECTIVES.index(name)] = weight
        return vector

    def score(self, rewards: np.ndarray) -> float:
        """Σ wᵢ·rewardᵢ for one conversation's [19] objective rewards."""
        return float(np.dot(self.vector(), np.asarray(rewards, dtype=np.float64)))

    def __str__(self) -> str:
        return ",".join(f"{name}={weight:g}" for name, weight in self.pairs)


def parse_weights(text: str) -> dict[str, float]:
    """`name=weight,name=weight` (':' works too) → weights by name; each finite, each name once. The one reader of
    weights: ArmoRM's objectives (ARMORM_OBJECTIVE_WEIGHTS, ?objective_weights=) and a mixture's members."""
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.replace(":", "=", 1).partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"weights are name=weight pairs separated by commas, got {item[:64]!r}")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"the weight of {name[:64]!r} is not a number: {value[:32]!r}") from None
        if not math.isfinite(weight):
            raise ValueError(f"the weight of {name[:64]!r} must be a finite number")
        if name in weights:
            raise ValueError(f"{name[:64]!r} is weighted twice")
        weights[name] = weight
    if not weights:
        raise ValueError("give at least one name=weight")
    return weights
