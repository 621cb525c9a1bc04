"""The packed, padding-free backbone runtime (PyTorch).

All conversations of a batch are concatenated into one token stream with per-conversation positions;
attention is causal within each conversation (varlen attention on GPU, a per-conversation SDPA loop
on CPU), and only the two hidden rows each conversation needs are gathered.

Shared prompts: conversations whose tokens agree up to and including the gate position (best-of-N
responses to one prompt) have that prompt computed once. Its keys/values are kept per layer, and each
response's tokens attend to them plus their own causal prefix, so the cost falls from Σ(P+R) to P+ΣR.
Both phases are split into forwards of at most `max_batch_tokens` tokens; a longer conversation runs
alone (never dropped).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from armorm.model.backbone import ArmoRMBackbone, rotary_tables
from armorm.model.batching import DEFAULT_MAX_BATCH_TOKENS, BackboneStats


@dataclass
class Segment:
    """One attention unit in a packed forward: `tokens` at positions `offset…`, optionally after a
    cached prefix (a shared prompt's per-layer keys/values)."""

    tokens: torch.Tensor  # int64 [length]
    offset: int = 0
    prefix: int | None = None  # index into the prefix cache

    @property
    def length(self) -> int:
        return int(self.tokens.shape[0])


@dataclass
class PrefixCache:
    """Per prefix, per layer: (k, v) [prefix_len, kv_heads, head_dim]."""

    layers: list[list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=list)

    def length(self, prefix: int) -> int:
        return int(self.layers[prefix][0][0].shape[0])

    def key_length(self, segment: Segment) -> int:
        """Keys a segment attends to: its cached prefix's, then its own."""
        return segment.length + (self.length(segment.prefix) if segment.prefix is not None else 0)


@dataclass(frozen=True)
class Layout:
    """Query and key lengths per segment (keys include a cached prompt), for one packed forward."""

    q_lengths: list[int]
    k_lengths: list[int]
    cu_q: torch.Tensor | None  # int32 cumulative offsets on the device, for the varlen kernel
    cu_k: torch.Tensor | None
    has_prefix: bool
    # SDPA fallback: per segment, the bottom-right causal mask when it attends to a prefix (else None).
    masks: list[torch.Tensor | None]


@dataclass(frozen=True)
class SharingPlan:
    prefixes: list[np.ndarray]  # token ids of each shared prompt (through the gate position)
    prefix_of: list[int | None]  # per conversation: the prefix it shares, or None

    @property
    def saved_tokens(self) -> int:
        """Prompt tokens not recomputed thanks to sharing."""
        counts = np.bincount([p for p in self.prefix_of if p is not None], minlength=len(self.prefixes))
        return int(sum((count - 1) * len(prefix) for count, prefix in zip(counts, self.prefixes)))


def plan_sharing(input_ids: Sequence[np.ndarray], gate_positions: np.ndarray,
                 reward_positions: np.ndarray) -> SharingPlan:
    """Group conversations whose tokens match through the gate position; groups of ≥ 2 share."""
    groups: dict[bytes, list[int]] = {}
    for index, ids in enumerate(input_ids):
        gate, reward = int(gate_positions[index]), int(reward_positions[index])
        if reward > gate:  # the response must lie after the prompt to be split off
            groups.setdefault(ids[: gate + 1].tobytes(), []).append(index)
    prefixes: list[np.ndarray] = []
    prefix_of: list[int | None] = [None] * len(input_ids)
    for members in groups.values():
        if len(members) < 2:
            continue
        first = members[0]
        prefixes.append(input_ids[first][: int(gate_positions[first]) + 1])
        for index in members:
            prefix_of[index] = len(prefixes) - 1
    return SharingPlan(prefixes, prefix_of)


def budget_chunks(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Consecutive indices grouped so each group's total length ≤ max_tokens (a longer one runs alone)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    total = 0
    for index, length in enumerate(lengths):
        if current and total + length > max_tokens:
            chunks.append(current)
            current, total = [], 0
        current.append(index)
        total += length
    if current:
        chunks.append(current)
    return chunks


def varlen_kwargs(kernel) -> dict[str, object]:
    """Keyword arguments for this torch build's varlen_attn: native GQA where offered, and causal
    aligned bottom-right (a response token sees the whole cached prompt before it)."""
    params = set(inspect.signature(kernel).parameters)
    kwargs: dict[str, object] = {"enable_gqa": True} if "enable_gqa" in params else {}
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0)
    else:
        kwargs["is_causal"] = True
    return kwargs


def _varlen_kernel():
    """torch's flash varlen attention where this build has it and a GPU is present, else None."""
    if not torch.cuda.is_available():
        return None
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


class PackedBackbone:
    def __init__(self, module: ArmoRMBackbone, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 attention: str = "auto") -> None:
        self.module = module
        self.config = module.config
        self.max_batch_tokens = max_batch_tokens
        self.device = next(module.parameters()).device
        self.dtype = next(module.parameters()).dtype
        flash_ok = (self.device.type == "cuda" and self.dtype in (torch.float16, torch.bfloat16)
                    and torch.cuda.get_device_capability(self.device) >= (8, 0))
        kernel = _varlen_kernel() if attention in ("auto", "varlen") and flash_ok else None
        if attention == "varlen" and kernel is None:
            raise RuntimeError("varlen attention needs torch.nn.attention.varlen, an SM80+ GPU and fp16/bf16")
        self.varlen = kernel
        self.varlen_kwargs = varlen_kwargs(kernel) if kernel is not None else {}
        self.last_stats = BackboneStats(0, 0, 0, 0)

    @property
    def attention_name(self) -> str:
        return "varlen (flash)" if self.varlen is not None else "sdpa per conversation"

    # -- attention -------------------------------------------------------------------------
    def _layout(self, segments: Sequence[Segment], cache: PrefixCache) -> Layout:
        """What every layer's attention needs about the segments, computed once per forward."""
        q_lengths = [s.length for s in segments]
        k_lengths = [cache.key_length(s) for s in segments]
        cu_q = cu_k = None
        masks: list[torch.Tensor | None] = []
        if self.varlen is not None:
            cu_q = torch.tensor(np.concatenate(([0], np.cumsum(q_lengths))), dtype=torch.int32, device=self.device)
            cu_k = torch.tensor(np.concatenate(([0], np.cumsum(k_lengths))), dtype=torch.int32, device=self.device)
        else:  # bottom-right causal: query j sees keys ≤ (lk - lq) + j
            masks = [None if lq == lk else torch.ones(lq, lk, dtype=torch.bool, device=self.device).tril(lk - lq)
                     for lq, lk in zip(q_lengths, k_lengths)]
        return Layout(q_lengths, k_lengths, cu_q, cu_k, any(s.prefix is not None for s in segments), masks)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: Sequence[Segment],
                layout: Layout, layer: int, cache: PrefixCache) -> torch.Tensor:
        """q [T, heads, d], k/v [T, kv_heads, d] (packed by segment) → [T, heads, d]."""
        if layout.has_prefix:  # each response's keys: its cached prompt's, then its own
            keys, values = [], []
            start = 0
            for segment in segments:
                end = start + segment.length
                if segment.prefix is not None:
                    pk, pv = cache.layers[segment.prefix][layer]
                    keys += [pk, k[start:end]]
                    values += [pv, v[start:end]]
                else:
                    keys.append(k[start:end])
                    values.append(v[start:end])
                start = end
            k, v = torch.cat(keys), torch.cat(values)
        if self.varlen is not None:
            return self._varlen(q, k, v, layout)
        return self._sdpa_loop(q, k, v, layout)

    def _varlen(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Layout) -> torch.Tensor:
        if "enable_gqa" not in self.varlen_kwargs:
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        return self.varlen(q, k, v, layout.cu_q, layout.cu_k, max(layout.q_lengths), max(layout.k_lengths),
                           **self.varlen_kwargs)

    def _sdpa_loop(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Layout) -> torch.Tensor:
        # 4-D [1, heads, L, d] with native GQA: torch's fused (flash) CPU kernel. 3-D inputs fall back to plain
        # matrix math that materialises every head's L×L scores (2-20x slower, and memory quadratic in L).
        outputs = []
        q_start = k_start = 0
        for lq, lk, mask in zip(layout.q_lengths, layout.k_lengths, layout.masks):
            query = q[q_start: q_start + lq].transpose(0, 1).unsqueeze(0)
            key = k[k_start: k_start + lk].transpose(0, 1).unsqueeze(0)
            value = v[k_start: k_start + lk].transpose(0, 1).unsqueeze(0)
            if mask is None:
                out = nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, enable_gqa=True)
            else:
                out = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=True)
            outputs.append(out[0].transpose(0, 1))
            q_start += lq
            k_start += lk
        return torch.cat(outputs)

    # -- forward ---------------------------------------------------------------------------
    def _forward(self, segments: Sequence[Segment], cache: PrefixCache, keep_kv: bool) -> torch.Tensor:
        """Packed forward of `segments` → hidden [T, hidden] before the final norm (the caller norms only
        the rows it gathers: the norm is per row).

        With keep_kv, each segment's per-layer k/v are appended to `cache` as a new prefix.
        """
        module = self.module
        tokens = torch.cat([s.tokens for s in segments]).to(self.device)
        positions = torch.cat([torch.arange(s.offset, s.offset + s.length) for s in segments]).to(self.device)
        x = module.embed_tokens(tokens)
        cos, sin = rotary_tables(self.config, positions, x.dtype)
        layout = self._layout(segments, cache)
        first_new = len(cache.layers)
        if keep_kv:
            cache.layers.extend([] for _ in segments)
        for index, layer in enumerate(module.layers):
            attention = layer.self_attn
            q, k, v = attention.qkv(layer.input_layernorm(x), cos, sin)
            if keep_kv:
                start = 0
                for number, segment in enumerate(segments):
                    end = start + segment.length
                    cache.layers[first_new + number].append((k[start:end], v[start:end]))
                    start = end
            out = self._attend(q, k, v, segments, layout, index, cache)
            x = x + attention.o_proj(out.reshape(out.shape[0], -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return x

    @torch.inference_mode()
    def run(self, input_ids: Sequence[np.ndarray], gate_positions: np.ndarray, reward_positions: np.ndarray,
            share_prompts: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """One 1-D int64 array per conversation → (gate_hidden, reward_hidden) [n, hidden] fp32, on the device."""
        count = len(input_ids)
        gate_positions = np.asarray(gate_positions).reshape(-1)
        reward_positions = np.asarray(reward_positions).reshape(-1)
        plan = (plan_sharing(input_ids, gate_positions, reward_positions) if share_prompts
                else SharingPlan([], [None] * count))
        hidden_size = self.config.hidden_size
        gate_out = torch.empty(count, hidden_size, dtype=torch.float32, device=self.device)
        reward_out = torch.empty(count, hidden_size, dtype=torch.float32, device=self.device)

        norm = self.module.norm
        # Phase A: shared prompts, once each; their last token is the gate row of every member.
        forwards = 0
        cache = PrefixCache()
        prefix_gate: list[torch.Tensor] = []
        prefix_segments = [Segment(torch.from_numpy(np.ascontiguousarray(p))) for p in plan.prefixes]
        for chunk in budget_chunks([s.length for s in prefix_segments], self.max_batch_tokens):
            segments = [prefix_segments[i] for i in chunk]
            hidden = self._forward(segments, cache, keep_kv=True)
            forwards += 1
            ends = torch.as_tensor(np.cumsum([s.length for s in segments]) - 1, device=self.device)
            prefix_gate.extend(norm(hidden[ends]).float().unbind(0))

        # Phase B: every conversation (or the part after its shared prompt).
        segments, gate_rows, reward_rows = [], [], []
        for index, ids in enumerate(input_ids):
            prefix = plan.prefix_of[index]
            offset = 0 if prefix is None else int(gate_positions[index]) + 1
            segments.append(Segment(torch.from_numpy(np.ascontiguousarray(ids[offset:])), offset, prefix))
            gate_rows.append(None if prefix is not None else int(gate_positions[index]))
            reward_rows.append(int(reward_positions[index]) - offset)
        # A response's cost includes the prompt keys/values it attends to (copied per response per layer).
        costs = [cache.key_length(s) for s in segments]
        for chunk in budget_chunks(costs, self.max_batch_tokens):
            chunk_segments = [segments[i] for i in chunk]
            hidden = self._forward(chunk_segments, cache, keep_kv=False)
            forwards += 1
            # One gather per chunk (not two tiny device ops per conversation).
            starts = np.concatenate(([0], np.cumsum([s.length for s in chunk_segments])[:-1]))
            rows = torch.as_tensor(chunk, device=self.device)
            reward_at = torch.as_tensor(starts + np.array([reward_rows[i] for i in chunk]), device=self.device)
            reward_out[rows] = norm(hidden[reward_at]).float()
            own = [(slot, i) for slot, i in enumerate(chunk) if gate_rows[i] is not None]
            if own:
                gate_at = torch.as_tensor([int(starts[slot]) + gate_rows[i] for slot, i in own], device=self.device)
                gate_out[torch.as_tensor([i for _, i in own], device=self.device)] = norm(hidden[gate_at]).float()
            shared = [i for i in chunk if gate_rows[i] is None]
            if shared:
                gate_out[torch.as_tensor(shared, device=self.device)] = torch.stack(
                    [prefix_gate[plan.prefix_of[i]] for i in shared])
        total = int(sum(len(ids) for ids in input_ids))
        self.last_stats = BackboneStats(conversations=count, tokens=total, computed_tokens=total - plan.saved_tokens,
                                        forwards=forwards, shared_prompts=len(plan.prefixes))
        return gate_out, reward_out
