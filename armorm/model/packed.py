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

# Per forward, the keys/values copied for the responses of shared prompts (each its prompt's and its own) may reach
# this many times the token budget: one layer's copy at a time, small beside the activations it replaces.
KEY_COPY_FACTOR = 16


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


@dataclass(frozen=True)
class RowPlan:
    """What the last layer needs to attend for the asked rows only, built on the host and copied to the device once
    per forward (two pinned copies: the int64 indices with the tokens and positions, and the boolean masks)."""

    segments: list[int]  # segments holding asked rows
    slots: list[torch.Tensor]  # per such segment: its rows' slots among the asked rows (device)
    masks: list[torch.Tensor]  # per such segment: [its rows, its keys] which keys each row sees (device)
    key_starts: list[int]  # where each segment's keys start once cached prompts are put before them

    @classmethod
    def build(cls, segments: Sequence[Segment], rows: Sequence[tuple[int, int]], cache: PrefixCache,
              starts: np.ndarray, device: torch.device) -> tuple[RowPlan, torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ (plan, tokens, positions, row index into the packed tokens), all on `device`."""
        key_lengths = [cache.key_length(s) for s in segments]
        key_starts = [0, *np.cumsum(key_lengths).tolist()]
        by_segment: dict[int, list[int]] = {}
        for slot, (segment, _) in enumerate(rows):
            by_segment.setdefault(segment, []).append(slot)
        masks = [torch.arange(key_lengths[segment]).unsqueeze(0) <= torch.tensor(
                 [key_lengths[segment] - segments[segment].length + rows[slot][1] for slot in slots]).unsqueeze(1)
                 for segment, slots in by_segment.items()]
        indices = torch.cat([torch.cat([s.tokens for s in segments]),
                             torch.cat([torch.arange(s.offset, s.offset + s.length) for s in segments]),
                             torch.tensor([int(starts[segment]) + position for segment, position in rows]),
                             torch.tensor([slot for slots in by_segment.values() for slot in slots])])
        indices = host_to_device(indices, device)
        flat_masks = host_to_device(torch.cat([m.reshape(-1) for m in masks]), device)
        total = sum(s.length for s in segments)
        tokens, positions = indices[:total], indices[total: 2 * total]
        row_index = indices[2 * total: 2 * total + len(rows)]
        slots = list(indices[2 * total + len(rows):].split([len(v) for v in by_segment.values()]))
        sizes = [m.numel() for m in masks]
        device_masks = [flat.view(m.shape) for flat, m in zip(flat_masks.split(sizes), masks)]
        return cls(list(by_segment), slots, device_masks, key_starts), tokens, positions, row_index


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


def budget_chunks(lengths: Sequence[int], max_tokens: int, groups: Sequence[int | None] | None = None,
                  shared: Sequence[int] | None = None) -> list[list[int]]:
    """Consecutive indices grouped so each group's cost ≤ max_tokens (a costlier one runs alone).

    The cost is the sum of `lengths`, plus, for members of a prompt group (`groups[i]` not None), that group's
    `shared[g]` prompt tokens once per chunk: the prompt's keys are what the responses attend to. The keys copied
    per response (its prompt's plus its own) are held to KEY_COPY_FACTOR × max_tokens, so memory stays bounded."""
    chunks: list[list[int]] = []
    current: list[int] = []
    seen: set[int] = set()
    cost = keys = 0
    for index, length in enumerate(lengths):
        group = groups[index] if groups is not None else None
        prompt = shared[group] if group is not None and shared is not None else 0
        added = length + (prompt if group not in seen else 0)
        if current and (cost + added > max_tokens or keys + length + prompt > KEY_COPY_FACTOR * max_tokens):
            chunks.append(current)
            current, seen, cost, keys = [], set(), 0, 0
            added = length + prompt
        current.append(index)
        cost += added
        keys += length + prompt
        if group is not None:
            seen.add(group)
    if current:
        chunks.append(current)
    return chunks


def prompt_waves(prompt_lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Prompt groups taken a wave at a time: each wave's prompts fit one forward of max_tokens (a longer prompt
    runs alone), and only one wave's keys/values are cached at once."""
    return budget_chunks(prompt_lengths, max_tokens)


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`: on a GPU from pinned memory without blocking the host (an index tensor copied
    from pageable memory or a list synchronises: the CPU could not prepare the next chunk meanwhile)."""
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


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
            offsets = torch.from_numpy(np.stack([np.concatenate(([0], np.cumsum(q_lengths))),
                                                 np.concatenate(([0], np.cumsum(k_lengths)))]).astype(np.int32))
            cu_q, cu_k = host_to_device(offsets, self.device).unbind(0)
        else:  # bottom-right causal: query j sees keys ≤ (lk - lq) + j
            masks = [None if lq == lk else torch.ones(lq, lk, dtype=torch.bool, device=self.device).tril(lk - lq)
                     for lq, lk in zip(q_lengths, k_lengths)]
        return Layout(q_lengths, k_lengths, cu_q, cu_k, any(s.prefix is not None for s in segments), masks)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: Sequence[Segment],
                layout: Layout, layer: int, cache: PrefixCache) -> torch.Tensor:
        """q [T, heads, d], k/v [T, kv_heads, d] (packed by segment) → [T, heads, d]."""
        if layout.has_prefix:
            k, v = self._with_prefixes(k, v, segments, layer, cache)
        if self.varlen is not None:
            return self._varlen(q, k, v, layout)
        return self._sdpa_loop(q, k, v, layout)

    @staticmethod
    def _with_prefixes(k: torch.Tensor, v: torch.Tensor, segments: Sequence[Segment], layer: int,
                       cache: PrefixCache) -> tuple[torch.Tensor, torch.Tensor]:
        """Each segment's keys/values: its cached prompt's (if any), then its own, packed by segment."""
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
        return torch.cat(keys), torch.cat(values)

    def _attend_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: Sequence[Segment],
                     plan: RowPlan, layer: int, cache: PrefixCache) -> torch.Tensor:
        """The last layer's attention for the asked rows only: q [rows, heads, d], each row seeing its cached prompt
        and its own segment up to itself (plan.masks) → [rows, heads, d]."""
        if any(s.prefix is not None for s in segments):
            k, v = self._with_prefixes(k, v, segments, layer, cache)
        out = torch.empty_like(q)
        for segment, slots, mask in zip(plan.segments, plan.slots, plan.masks):
            start, end = plan.key_starts[segment], plan.key_starts[segment + 1]
            query = q[slots].transpose(0, 1).unsqueeze(0)
            key = k[start:end].transpose(0, 1).unsqueeze(0)
            value = v[start:end].transpose(0, 1).unsqueeze(0)
            attended = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=True)
            out[slots] = attended[0].transpose(0, 1)
        return out

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
    def _forward(self, segments: Sequence[Segment], cache: PrefixCache, keep_kv: bool,
                 rows: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Packed forward of `segments` → the final-normed hidden state [len(rows), hidden] (fp32) at each asked
        (segment, position in the segment) row. The last layer runs its queries, output projection and MLP for
        those rows only: nothing reads the other rows' last hidden state.

        With keep_kv, each segment's per-layer k/v are appended to `cache` as a new prefix.
        """
        module = self.module
        starts = np.concatenate(([0], np.cumsum([s.length for s in segments])[:-1]))
        plan, tokens, positions, row_index = RowPlan.build(segments, rows, cache, starts, self.device)
        x = module.embed_tokens(tokens)
        cos, sin = rotary_tables(self.config, positions, x.dtype)
        layout = self._layout(segments, cache)
        first_new = len(cache.layers)
        if keep_kv:
            cache.layers.extend([] for _ in segments)
        last = len(module.layers) - 1
        for index, layer in enumerate(module.layers):
            attention = layer.self_attn
            hidden = layer.input_layernorm(x)
            k, v = attention.keys_values(hidden, cos, sin)
            if keep_kv:
                for number, segment in enumerate(segments):
                    start = int(starts[number])
                    cache.layers[first_new + number].append((k[start: start + segment.length],
                                                             v[start: start + segment.length]))
            if index < last:
                q = attention.queries(hidden, cos, sin)
                out = self._attend(q, k, v, segments, layout, index, cache)
            else:
                q = attention.queries(hidden[row_index], cos[row_index], sin[row_index])
                out = self._attend_rows(q, k, v, segments, plan, index, cache)
                x = x[row_index]
            x = x + attention.o_proj(out.reshape(out.shape[0], -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return module.norm(x).float()

    @torch.inference_mode()
    def run(self, input_ids: Sequence[np.ndarray], gate_positions: np.ndarray, reward_positions: np.ndarray,
            share_prompts: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """One 1-D int64 array per conversation → (gate_hidden, reward_hidden) [n, hidden] fp32, on the device.

        Conversations without a shared prompt run in forwards of at most `max_batch_tokens` tokens. Prompt groups
        run a wave at a time (prompts of one wave fit one forward; then their responses, each prompt charged once per
        forward), and a wave's cached keys/values are freed before the next: memory is bounded by the budget,
        whatever the batch's prompts."""
        count = len(input_ids)
        gate_positions = np.asarray(gate_positions).reshape(-1)
        reward_positions = np.asarray(reward_positions).reshape(-1)
        plan = (plan_sharing(input_ids, gate_positions, reward_positions) if share_prompts
                else SharingPlan([], [None] * count))
        parts: list[torch.Tensor] = []  # every forward's rows, in order
        gate_source = np.zeros(count, np.int64)  # where each conversation's gate and reward rows are in parts
        reward_source = np.zeros(count, np.int64)
        produced = 0
        forwards = 0

        def forward(segments: list[Segment], cache: PrefixCache, keep_kv: bool,
                    rows: list[tuple[int, int]]) -> int:
            nonlocal produced, forwards
            parts.append(self._forward(segments, cache, keep_kv, rows))
            forwards += 1
            produced += len(rows)
            return produced - len(rows)

        own = [i for i in range(count) if plan.prefix_of[i] is None]
        for chunk in budget_chunks([len(input_ids[i]) for i in own], self.max_batch_tokens):
            members = [own[c] for c in chunk]
            segments = [Segment(torch.from_numpy(np.ascontiguousarray(input_ids[i]))) for i in members]
            rows = [(slot, int(p)) for slot, i in enumerate(members)
                    for p in (gate_positions[i], reward_positions[i])]
            first = forward(segments, PrefixCache(), False, rows)
            gate_source[members] = first + 2 * np.arange(len(members))
            reward_source[members] = first + 2 * np.arange(len(members)) + 1

        members_of: list[list[int]] = [[] for _ in plan.prefixes]
        for index, prefix in enumerate(plan.prefix_of):
            if prefix is not None:
                members_of[prefix].append(index)
        for wave in prompt_waves([len(p) for p in plan.prefixes], self.max_batch_tokens):
            cache = PrefixCache()  # this wave's prompts only: freed when the next wave starts
            prompts = [Segment(torch.from_numpy(np.ascontiguousarray(plan.prefixes[g]))) for g in wave]
            first = forward(prompts, cache, True, [(slot, s.length - 1) for slot, s in enumerate(prompts)])
            for slot, group in enumerate(wave):  # a prompt's last token is the gate row of every member
                gate_source[members_of[group]] = first + slot
            members = [i for g in wave for i in members_of[g]]
            slot_of = {group: slot for slot, group in enumerate(wave)}
            segments = [Segment(torch.from_numpy(np.ascontiguousarray(input_ids[i][int(gate_positions[i]) + 1:])),
                                int(gate_positions[i]) + 1, slot_of[plan.prefix_of[i]]) for i in members]
            groups = [slot_of[plan.prefix_of[i]] for i in members]
            for chunk in budget_chunks([s.length for s in segments], self.max_batch_tokens, groups,
                                       [s.length for s in prompts]):
                rows = [(slot, int(reward_positions[members[c]] - gate_positions[members[c]]) - 1)
                        for slot, c in enumerate(chunk)]
                first = forward([segments[c] for c in chunk], cache, False, rows)
                reward_source[[members[c] for c in chunk]] = first + np.arange(len(chunk))
            del cache
        hidden = torch.cat(parts) if parts else torch.empty(0, self.config.hidden_size, device=self.device)
        sources = host_to_device(torch.from_numpy(np.stack([gate_source, reward_source])), self.device)
        total = int(sum(len(ids) for ids in input_ids))
        self.last_stats = BackboneStats(conversations=count, tokens=total, computed_tokens=total - plan.saved_tokens,
                                        forwards=forwards, shared_prompts=len(plan.prefixes))
        return hidden[sources[0]], hidden[sources[1]]
