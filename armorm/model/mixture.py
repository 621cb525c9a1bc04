"""A mixture of reward models: each member's score and their weighted sum, in one call.

Members are the repository's public models (ArmoRM, Bradley–Terry models), each read at its `score`. The sum is
Σ w_k · s_k with the raw scores, not normalised (as TRL's `reward_weights` and verl's weighted sums); a member
given statistics (mean, std) enters standardised, (s_k − mean) / std, as OpenRLHF's --normalize_reward does with
stored statistics. Weights are named at export; a request may give its own (`name=weight,...`, members it does not
name weigh 0). Pure: the served model (armorm.serving.mixture_step) and the tests use it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from armorm_client.steering import parse_weights

MIXTURE_FILE = "mixture.json"  # under the mixture model's version folder


@dataclass(frozen=True)
class Member:
    name: str
    weight: float
    mean: float = 0.0
    std: float = 1.0  # (mean, std) = (0, 1): the raw score


@dataclass(frozen=True)
class Mixture:
    members: tuple[Member, ...]

    def __post_init__(self) -> None:
        names = [m.name for m in self.members]
        if not names:
            raise ValueError("a mixture needs at least one member")
        if len(set(names)) != len(names):
            raise ValueError(f"a member is named twice in {names}")
        for member in self.members:
            if not all(map(math.isfinite, (member.weight, member.mean, member.std))) or member.std <= 0:
                raise ValueError(f"{member.name}: weight and mean must be finite numbers, std a positive one")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)

    def weights(self, override: str | None = None) -> np.ndarray:
        """[K] fp64: the export's weights, or a request's own (`name=weight,...`; members not named weigh 0)."""
        if override is None:
            return np.array([m.weight for m in self.members])
        given = parse_weights(override)
        unknown = sorted(set(given) - set(self.names))
        if unknown:
            raise ValueError(f"weights name {', '.join(map(repr, unknown))}, not members of this mixture "
                             f"({', '.join(self.names)})")
        return np.array([given.get(name, 0.0) for name in self.names])

    def combine(self, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """[n, K] member scores → [n] weighted sum of the (standardised where stated) scores."""
        means = np.array([m.mean for m in self.members])
        stds = np.array([m.std for m in self.members])
        return ((np.asarray(scores, dtype=np.float64) - means) / stds) @ weights

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"members": [vars(m) for m in self.members]}, indent=2))

    @classmethod
    def load(cls, path: Path) -> Mixture:
        return cls(tuple(Member(**m) for m in json.loads(path.read_text())["members"]))
