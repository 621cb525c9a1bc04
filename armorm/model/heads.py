"""ArmoRM's heads: regression, gating MLP and reward transform. The one copy of this math.

Everything runs in fp32 (the regression weights were trained and are stored in fp32); the device
is whatever the input tensors live on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from armorm.model.config import ArmoRMConfig
from armorm_client.contract import COEFFICIENTS, SCORE


@dataclass(frozen=True)
class RegressionWeights:
    weight: torch.Tensor  # [objectives, hidden]

    def to(self, device: torch.device | str) -> RegressionWeights:
        return RegressionWeights(self.weight.to(device=device, dtype=torch.float32))

    def save(self, path: Path) -> None:
        save_file({"regression_layer.weight": self.weight.float().contiguous()}, str(path))

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu") -> RegressionWeights:
        return cls(load_file(str(path))["regression_layer.weight"]).to(device)


@dataclass(frozen=True)
class GatingWeights:
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # (weight [out, in], bias [out]) per Linear
    logit_scale: float
    temperature: float

    def to(self, device: torch.device | str) -> GatingWeights:
        layers = tuple((w.to(device, torch.float32), b.to(device, torch.float32)) for w, b in self.layers)
        return GatingWeights(layers, self.logit_scale, self.temperature)

    def save(self, path: Path) -> None:
        tensors = {}
        for index, (weight, bias) in enumerate(self.layers):
            tensors[f"gating.layers.{index}.weight"] = weight.float().contiguous()
            tensors[f"gating.layers.{index}.bias"] = bias.float().contiguous()
        tensors["gating.logit_scale"] = torch.tensor([self.logit_scale], dtype=torch.float32)
        tensors["gating.temperature"] = torch.tensor([self.temperature], dtype=torch.float32)
        save_file(tensors, str(path))

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu") -> GatingWeights:
        tensors = load_file(str(path))
        count = sum(1 for name in tensors if name.endswith(".weight"))
        layers = tuple(
            (tensors[f"gating.layers.{i}.weight"], tensors[f"gating.layers.{i}.bias"]) for i in range(count)
        )
        weights = cls(layers, float(tensors["gating.logit_scale"].item()), float(tensors["gating.temperature"].item()))
        return weights.to(device)


@dataclass(frozen=True)
class TransformWeights:
    matrix: torch.Tensor  # reward_transform_matrix T [objectives, objectives]

    def to(self, device: torch.device | str) -> TransformWeights:
        return TransformWeights(self.matrix.to(device=device, dtype=torch.float32))

    def save(self, path: Path) -> None:
        save_file({"reward_transform_matrix": self.matrix.float().contiguous()}, str(path))

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu") -> TransformWeights:
        return cls(load_file(str(path))["reward_transform_matrix"]).to(device)


@dataclass(frozen=True)
class HeadWeights:
    regression: RegressionWeights
    gating: GatingWeights
    transform: TransformWeights

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], config: ArmoRMConfig) -> HeadWeights:
        """Pick the head tensors out of an ArmoRM checkpoint's parameters."""
        layer_count = config.gating_n_hidden + 1
        missing = [
            name
            for name in ["regression_layer.weight", "gating.logit_scale", "reward_transform_matrix"]
            + [f"gating.layers.{i}.{p}" for i in range(layer_count) for p in ("weight", "bias")]
            if name not in state
        ]
        if missing:
            raise KeyError(f"checkpoint lacks head parameters: {', '.join(missing)}")
        layers = tuple(
            (state[f"gating.layers.{i}.weight"], state[f"gating.layers.{i}.bias"]) for i in range(layer_count)
        )
        logit_scale = float(state["gating.logit_scale"].float().item())
        return cls(
            RegressionWeights(state["regression_layer.weight"]).to("cpu"),
            GatingWeights(layers, logit_scale, float(config.gating_temperature)).to("cpu"),
            TransformWeights(state["reward_transform_matrix"]).to("cpu"),
        )

    def to(self, device: torch.device | str) -> HeadWeights:
        return HeadWeights(self.regression.to(device), self.gating.to(device), self.transform.to(device))


def regression(reward_hidden: torch.Tensor, weights: RegressionWeights) -> torch.Tensor:
    """[batch, hidden] at the last real token → rewards [batch, objectives]."""
    return reward_hidden.float() @ weights.weight.T


def gating(gate_hidden: torch.Tensor, weights: GatingWeights) -> torch.Tensor:
    """[batch, hidden] at the prompt's end → gating [batch, objectives] (ReLU MLP, tempered softmax)."""
    x = gate_hidden.float()
    last = len(weights.layers) - 1
    for index, (weight, bias) in enumerate(weights.layers):
        x = torch.nn.functional.linear(x, weight, bias)
        if index < last:
            x = torch.relu(x)
    return torch.softmax(x / weights.temperature, dim=-1) * weights.logit_scale


def transform(
    rewards: torch.Tensor, gating_output: torch.Tensor, weights: TransformWeights
) -> tuple[torch.Tensor, torch.Tensor]:
    """→ (score [batch], coefficients [batch, objectives]).

    score is computed as the original does, Σ_j gating_j · (rewards @ T)_j; coefficients = gating @ Tᵀ
    is what the model card reports, so that score == Σ rewards · coefficients (checked by the tests).
    """
    gating_output = gating_output.float()
    score = (gating_output * (rewards.float() @ weights.matrix)).sum(dim=-1)
    coefficients = gating_output @ weights.matrix.T
    return score, coefficients


def transform_outputs(rewards: torch.Tensor, gating_output: torch.Tensor,
                      weights: TransformWeights) -> dict[str, torch.Tensor]:
    """The transform step's computed outputs by contract name, shaped as declared ([batch, 1] for one value).
    The served transform model returns these plus what it passes through: a new output is declared in the
    contract and computed here, nowhere else."""
    score, coefficients = transform(rewards, gating_output, weights)
    return {SCORE.name: score.unsqueeze(-1), COEFFICIENTS.name: coefficients}


def score_rows(
    gate_hidden: torch.Tensor, reward_hidden: torch.Tensor, weights: HeadWeights
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole head on [batch, hidden] rows, as the ensemble chains it → (score, rewards, gating, coefficients)."""
    rewards = regression(reward_hidden, weights.regression)
    gating_output = gating(gate_hidden, weights.gating)
    score, coefficients = transform(rewards, gating_output, weights.transform)
    return score, rewards, gating_output, coefficients
