"""bf16 fidelity: the reference's bf16 path computes what the model card computes, and the criterion used by the
GPU check (armorm.testing.fidelity) passes the packed runtime while catching an off-by-one in shared-prompt positions
and a wrong causal alignment, injected here on CPU in bf16."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from armorm.model import heads
from armorm.model import packed as packed_module
from armorm.model.backbone import ArmoRMBackbone, rotary_tables
from armorm.model.checkpoint import Checkpoint, load_tokenizer
from armorm.model.config import ArmoRMConfig
from armorm.model.conversation import ConversationTokenizer
from armorm.model.packed import Layout, PackedBackbone
from armorm.reference import ArmoRMReference
from armorm.testing.fidelity import judge
from armorm.testing.workloads import best_of_n, flatten, mix


def test_the_bf16_reference_keeps_rope_in_fp32_as_the_model_card_does(tiny_checkpoint):
    reference = ArmoRMReference(tiny_checkpoint, dtype=torch.bfloat16)
    config = ArmoRMConfig.from_dict(reference.raw_config)
    rotary = reference.backbone.rotary_emb
    assert rotary.inv_freq.dtype == torch.float32
    positions = torch.tensor([[0, 1000, 4000, 8000]])
    probe = torch.zeros(1, 4, config.hidden_size, dtype=torch.bfloat16)
    cos, sin = rotary(probe, position_ids=positions)
    expected_cos, expected_sin = rotary_tables(config, positions[0], torch.float32)
    # Only the final cast to bf16 may differ (a bf16 inv_freq is off by radians at these positions).
    assert float((cos[0].float() - expected_cos).abs().max()) <= 8e-3
    assert float((sin[0].float() - expected_sin).abs().max()) <= 8e-3


@pytest.fixture(scope="module")
def fidelity_case(tiny_checkpoint):
    checkpoint = Checkpoint.load(tiny_checkpoint)
    fp32 = ArmoRMReference(checkpoint, dtype=torch.float32)
    card = ArmoRMReference(checkpoint, dtype=torch.bfloat16)
    conversations = flatten(best_of_n(3, 4, 300, (20, 80), seed=3)) + mix(6, 100, 600, seed=1)
    # The served path: its tokenizer, the packed runtime in bf16, its heads.
    tokenizer = ConversationTokenizer(load_tokenizer(checkpoint.directory))
    tokens = [tokenizer.tokenize(m) for m in conversations]
    packed = PackedBackbone(ArmoRMBackbone.from_state_dict(checkpoint.config, checkpoint.state, torch.bfloat16))
    served_heads = heads.HeadWeights.from_state_dict(checkpoint.state, checkpoint.config)

    def served() -> np.ndarray:
        gate, reward = packed.run([t.input_ids for t in tokens], np.array([t.gate_position for t in tokens]),
                                  np.array([t.reward_position for t in tokens]))
        return heads.score_rows(gate, reward, served_heads)[0].numpy()

    return (served, [card.score(m).score for m in conversations], [fp32.score(m).score for m in conversations],
            packed)


def test_the_packed_runtime_meets_the_criterion(fidelity_case):
    served, card, fp32, packed = fidelity_case
    verdict = judge("mix + best-of-4", served(), card, fp32)
    assert packed.last_stats.shared_prompts == 3
    assert verdict.card_error > 0 and verdict.ok, verdict.line()


def test_an_off_by_one_in_shared_prompt_positions_fails_the_criterion(fidelity_case, monkeypatch):
    @dataclass
    class ShiftedSegment(packed_module.Segment):
        def __post_init__(self) -> None:
            if self.prefix is not None:  # a response's positions start one early
                self.offset -= 1

    monkeypatch.setattr(packed_module, "Segment", ShiftedSegment)
    served, card, fp32, _ = fidelity_case
    verdict = judge("mix + best-of-4", served(), card, fp32)
    assert not verdict.ok, verdict.line()


def test_top_left_causal_alignment_fails_the_criterion(fidelity_case, monkeypatch):
    right_aligned = PackedBackbone._layout

    def top_left(self, segments, cache) -> Layout:
        layout = right_aligned(self, segments, cache)
        masks = [None if mask is None else torch.ones_like(mask).tril(0) for mask in layout.masks]
        return Layout(layout.q_lengths, layout.k_lengths, layout.cu_q, layout.cu_k, layout.has_prefix, masks)

    monkeypatch.setattr(PackedBackbone, "_layout", top_left)
    served, card, fp32, _ = fidelity_case
    verdict = judge("mix + best-of-4", served(), card, fp32)
    assert not verdict.ok, verdict.line()
