"""A Llama-3 backbone that returns only the two hidden rows ArmoRM's heads read.

This is the module the export traces to ONNX: its parameter names are the checkpoint's `model.*`
names (without the prefix), so the checkpoint's tensors load as they are. Batches are right-padded;
with causal attention a real token never sees the padding after it, so no attention mask is needed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from armorm.model.config import ArmoRMConfig


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 on a GPU (as ArmoRM is stored), fp32 on CPU (bf16 matmuls there are slow and less exact)."""
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def inverse_frequencies(config: ArmoRMConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """RoPE's inverse frequencies [head_dim / 2], fp32; with Llama-3.1's `rope_scaling` (rope_type "llama3") the low
    frequencies are divided by `factor` and the middle band smoothed between, as transformers computes them."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    scaling = config.rope_scaling
    if not scaling:
        return inv_freq
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inv_freq
    scaled = torch.where(wavelength > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelength < old_context / high) & ~(wavelength > old_context / low)
    return torch.where(medium, smoothed, scaled)


def rotary_tables(
    config: ArmoRMConfig, positions: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [..., head_dim] for the given positions (rotate-half convention, as Hugging Face stores q/k)."""
    angles = positions.float().unsqueeze(-1) * inverse_frequencies(config, positions.device)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: ArmoRMConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=False)

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [..., tokens, hidden] → rotated q [..., tokens, heads, dim], k and v [..., tokens, kv_heads, dim]."""
        return (self.queries(x, cos, sin), *self.keys_values(x, cos, sin))

    def queries(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q = self.q_proj(x).view(*x.shape[:-1], self.heads, self.head_dim)
        return q * cos.unsqueeze(-2) + rotate_half(q) * sin.unsqueeze(-2)

    def keys_values(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.k_proj(x).view(*x.shape[:-1], self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(*x.shape[:-1], self.kv_heads, self.head_dim)
        return k * cos.unsqueeze(-2) + rotate_half(k) * sin.unsqueeze(-2), v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = (t.transpose(1, 2) for t in self.qkv(x, cos, sin))
        group = self.heads // self.kv_heads
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        scores = (q @ k.transpose(-1, -2)) * (self.head_dim**-0.5) + mask
        probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        out = (probs @ v).transpose(1, 2).reshape(batch, length, self.heads * self.head_dim)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, config: ArmoRMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ArmoRMConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


def gather_rows(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """hidden [batch, tokens, size], positions [batch] → [batch, size] (one ONNX GatherElements)."""
    index = positions.reshape(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
    return hidden.gather(1, index).squeeze(1)


class ArmoRMBackbone(nn.Module):
    """input_ids [batch, tokens] (right-padded), positions [batch] → (gate_hidden, reward_hidden) [batch, hidden]."""

    def __init__(self, config: ArmoRMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """last_hidden_state [batch, tokens, hidden], after the final norm."""
        length = input_ids.shape[1]
        x = self.embed_tokens(input_ids)
        positions = torch.arange(length, device=input_ids.device)
        cos, sin = rotary_tables(self.config, positions, x.dtype)
        blocked = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).triu(1)
        mask = torch.zeros(length, length, dtype=x.dtype, device=input_ids.device).masked_fill(
            blocked, torch.finfo(x.dtype).min
        )
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.norm(x)

    def forward(
        self, input_ids: torch.Tensor, gate_position: torch.Tensor, reward_position: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden_states(input_ids)
        return gather_rows(hidden, gate_position).float(), gather_rows(hidden, reward_position).float()

    @classmethod
    def from_state_dict(
        cls, config: ArmoRMConfig, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32
    ) -> ArmoRMBackbone:
        """Build from a checkpoint's parameters (`model.*` names)."""
        with torch.device("meta"):
            module = cls(config)
        weights = {name.removeprefix("model."): t.to(dtype) for name, t in state.items() if name.startswith("model.")}
        module.load_state_dict(weights, strict=True, assign=True)
        return module.to(dtype).eval()
