"""The reference forward pass: ArmoRM computed the way its published code does, sharing nothing with what it checks.

It is the oracle of every parity test, the export's check and the benchmark's "model card pipeline", so it reuses
none of the served path's code: not its tokenizer wrapper, validation, config parsing, backbone or heads. It sits
outside `armorm.testing` because the export runs it too; the serving path never imports it.
- ids: the checkpoint's own chat template, `tokenizer.apply_chat_template(messages, tokenize=True)`;
- gate position: the original's backward scan for the last GATE_PATTERN_TEXT (encoded by the tokenizer);
  reward position: the original's `argmax(ids == pad) - 1` modulo the length;
- backbone: Hugging Face `LlamaModel` built from the raw config.json, weights loaded strictly;
- heads: `nn.Module`s with the checkpoint's parameter names, loaded strictly from the raw state dict; score as
  Σ_j g_j (r @ T)_j, coefficients as g @ Tᵀ.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from armorm.model.conversation import TokenizedConversation  # a plain record; the logic here is the oracle's own
from armorm_client.result import ArmoRMScore

GATE_PATTERN_TEXT = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"


def load_raw_checkpoint(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """config.json as a plain dict and every tensor of the (sharded) safetensors, as stored."""
    from safetensors.torch import load_file

    config = json.loads((directory / "config.json").read_text())
    index = directory / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists()
             else ["model.safetensors"])
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(directory / name)))
    return config, state


def hf_llama(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], dtype: torch.dtype,
             device: torch.device | str, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import LlamaConfig, LlamaModel

    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "rms_norm_eps", "rope_theta", "max_position_embeddings", "bos_token_id",
            "eos_token_id", "pad_token_id")
    scaling = {"rope_scaling": config["rope_scaling"]} if config.get("rope_scaling") else {}
    llama_config = LlamaConfig(**{key: config[key] for key in keys}, **scaling,
                               attn_implementation=attn_implementation)
    with torch.device("meta"):
        model = LlamaModel(llama_config)
    weights = {name.removeprefix("model."): t.to(dtype) for name, t in state.items() if name.startswith("model.")}
    model.load_state_dict(weights, strict=True, assign=True)
    rotary = type(model.rotary_emb)
    model.rotary_emb = nn.Identity()  # its buffer is on meta: set aside through the cast below
    model = model.to(device=device, dtype=dtype)
    # from_pretrained(torch_dtype=bfloat16), what the model card runs, keeps the rotary inv_freq in fp32; .to(dtype)
    # would make it bf16 (RoPE phases off by radians 1000+ tokens apart): rebuild it after the cast.
    model.rotary_emb = rotary(config=llama_config).to(device)  # moved, never cast: inv_freq stays fp32
    return model.eval()


class GatingNetwork(nn.Module):
    """As in the published modeling code: Linear+ReLU layers, then softmax(x / T) · logit_scale."""

    def __init__(self, hidden: int, objectives: int, width: int, n_hidden: int, temperature: float) -> None:
        super().__init__()
        sizes = [hidden] + [width] * n_hidden + [objectives]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.logit_scale = nn.Parameter(torch.ones(1))
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = torch.relu(x)
        return torch.softmax(x / self.temperature, dim=-1) * self.logit_scale


class RewardHeads(nn.Module):
    """regression_layer, gating and reward_transform_matrix under the checkpoint's own parameter names."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        hidden, objectives = config["hidden_size"], config["num_objectives"]
        self.regression_layer = nn.Linear(hidden, objectives, bias=False)
        self.gating = GatingNetwork(hidden, objectives, config["gating_hidden_dim"], config["gating_n_hidden"],
                                    float(config["gating_temperature"]))
        self.reward_transform_matrix = nn.Parameter(torch.eye(objectives))

    @classmethod
    def load(cls, config: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> RewardHeads:
        heads = cls(config)
        head_state = {name: t.float() for name, t in state.items() if not name.startswith("model.")}
        heads.load_state_dict(head_state, strict=True)
        return heads.float().eval()

    def forward(self, gate_hidden: torch.Tensor, reward_hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        rewards = self.regression_layer(reward_hidden)
        gating = self.gating(gate_hidden)
        transform = self.reward_transform_matrix
        score = (gating * (rewards @ transform)).sum(dim=-1)
        return {"score": score, "rewards": rewards, "gating": gating, "coefficients": gating @ transform.T}


def find_token_for_gating(ids: Sequence[int], pattern: Sequence[int]) -> int:
    """The original's backward scan: start of the last occurrence of `pattern`."""
    width = len(pattern)
    for start in range(len(ids) - width, -1, -1):
        if list(ids[start: start + width]) == list(pattern):
            return start
    raise ValueError("Token pattern not found in the list.")


@dataclass(frozen=True)
class ParityRows:
    """Reference hidden rows of some conversations, with the inputs a backbone runtime takes
    (`runtime.run(input_ids, gate_positions, reward_positions)`)."""

    input_ids: list[np.ndarray]
    gate_positions: np.ndarray
    reward_positions: np.ndarray
    gate_hidden: np.ndarray  # [n, hidden] fp32
    reward_hidden: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    def max_error(self, gate_hidden: object, reward_hidden: object) -> float:
        """Largest |runtime − reference| over both rows of every conversation."""
        return max(float(np.abs(np.asarray(gate_hidden, dtype=np.float32) - self.gate_hidden).max()),
                   float(np.abs(np.asarray(reward_hidden, dtype=np.float32) - self.reward_hidden).max()))


class ArmoRMReference:
    """`checkpoint`: a checkpoint directory (read raw), or an object with `.directory` (the tokenizer), `.state`
    and `.config.to_dict()` (weights made in memory, e.g. the GPU check's random 8B ones)."""

    def __init__(self, checkpoint: str | Path | Any, device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        from transformers import AutoTokenizer

        if isinstance(checkpoint, (str, Path)):
            directory = Path(checkpoint)
            self.raw_config, state = load_raw_checkpoint(directory)
        else:
            directory, state, self.raw_config = checkpoint.directory, checkpoint.state, checkpoint.config.to_dict()
        self.device = torch.device(device)
        self.dtype = dtype
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory))
        self.gate_pattern = self.tokenizer.encode(GATE_PATTERN_TEXT, add_special_tokens=False)
        self.pad_token_id = int(self.raw_config["pad_token_id"])
        self.backbone = hf_llama(self.raw_config, state, dtype, self.device)
        self.heads = RewardHeads.load(self.raw_config, state).to(self.device)

    def tokenize(self, messages: Sequence[Mapping[str, str]], max_length: int | None = None) -> TokenizedConversation:
        """As the model card's pipeline tokenizes; with `max_length`, its truncation=True, max_length=…"""
        truncation = {"truncation": True, "max_length": max_length} if max_length else {}
        ids = self.tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=False,
                                                 **truncation)
        if isinstance(ids, Mapping):  # newer transformers return a BatchEncoding
            ids = ids["input_ids"]
        ids_array = np.asarray(ids, dtype=np.int64)
        pads = ids_array == self.pad_token_id
        reward = (int(pads.argmax()) - 1) % ids_array.shape[0]  # no pad: argmax 0 → the last token
        return TokenizedConversation(ids_array, find_token_for_gating(ids_array.tolist(), self.gate_pattern), reward)

    @torch.inference_mode()
    def rows_of(self, tokens: TokenizedConversation) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate_hidden, reward_hidden) [hidden] of a tokenized conversation."""
        ids = torch.as_tensor(tokens.input_ids, device=self.device).unsqueeze(0)
        hidden = self.backbone(input_ids=ids).last_hidden_state[0]
        return hidden[tokens.gate_position], hidden[tokens.reward_position]

    def parity_rows(self, conversations: Sequence[Sequence[Mapping[str, str]]]) -> ParityRows:
        """Each conversation tokenized once, its reference rows as fp32 numpy: what parity checks compare."""
        tokens = [self.tokenize(m) for m in conversations]
        rows = [self.rows_of(t) for t in tokens]
        return ParityRows(
            input_ids=[t.input_ids for t in tokens],
            gate_positions=np.array([t.gate_position for t in tokens]),
            reward_positions=np.array([t.reward_position for t in tokens]),
            gate_hidden=torch.stack([g for g, _ in rows]).float().cpu().numpy(),
            reward_hidden=torch.stack([r for _, r in rows]).float().cpu().numpy(),
        )

    @torch.inference_mode()
    def score(self, messages: Sequence[Mapping[str, str]], max_length: int | None = None) -> ArmoRMScore:
        tokens = self.tokenize(messages, max_length)
        gate_hidden, reward_hidden = self.rows_of(tokens)
        outputs = self.heads(gate_hidden.float().unsqueeze(0), reward_hidden.float().unsqueeze(0))
        return ArmoRMScore(score=float(outputs["score"][0]), rewards=outputs["rewards"][0].cpu().numpy(),
                           gating=outputs["gating"][0].cpu().numpy(),
                           coefficients=outputs["coefficients"][0].cpu().numpy(), num_tokens=tokens.num_tokens)
