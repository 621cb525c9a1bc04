"""The packed, padding-free runtime (armorm.model.packed) against the Hugging Face reference, fp32 on CPU."""

import numpy as np
import pytest
import torch

from armorm.model.backbone import ArmoRMBackbone
from armorm.model.checkpoint import Checkpoint
from armorm.model.packed import PackedBackbone, budget_chunks, plan_sharing, varlen_kwargs
from tests.conversations import varied_conversations

ATOL = 1e-4
PROMPT = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Describe the sea in one line."}]
RESPONSES = ["Blue.", "Endless, restless and salty.", "It is wet " * 20, "🌊"]


def best_of_n_conversations():
    return [PROMPT + [{"role": "assistant", "content": r}] for r in RESPONSES]


@pytest.fixture(scope="module")
def backbone(tiny_checkpoint):
    checkpoint = Checkpoint.load(tiny_checkpoint)
    return ArmoRMBackbone.from_state_dict(checkpoint.config, checkpoint.state, torch.float32)


@pytest.fixture(scope="module")
def cases(reference):
    return reference.parity_rows(varied_conversations() + best_of_n_conversations())


@pytest.fixture(scope="module")
def group(reference):
    return reference.parity_rows(best_of_n_conversations())


def run(runner, rows, **kwargs):
    return runner.run(rows.input_ids, rows.gate_positions, rows.reward_positions, **kwargs)


@pytest.mark.parametrize("budget", [1 << 20, 2048, 300])
@pytest.mark.parametrize("share", [True, False])
def test_packed_matches_reference(backbone, cases, budget, share):
    runner = PackedBackbone(backbone, max_batch_tokens=budget)
    error = cases.max_error(*run(runner, cases, share_prompts=share))
    assert error <= ATOL, f"packed (budget {budget}, share {share}) vs reference: {error:.3g}"


def test_shared_prompt_is_computed_once(backbone, group):
    runner = PackedBackbone(backbone)
    gate, _ = run(runner, group)
    stats = runner.last_stats
    prompt_tokens = int(group.gate_positions[0]) + 1
    assert stats.shared_prompts == 1
    assert stats.computed_tokens == stats.tokens - (len(RESPONSES) - 1) * prompt_tokens
    # One gate row for the prompt, bit-identical for every response.
    assert all(torch.equal(gate[0], row) for row in gate)


def test_sharing_plan_needs_identical_tokens_through_the_gate():
    a = np.array([1, 2, 3, 9, 9])
    b = np.array([1, 2, 3, 8])
    c = np.array([1, 2, 4, 8])
    plan = plan_sharing([a, b, c], np.array([2, 2, 2]), np.array([4, 3, 3]))
    assert plan.prefix_of == [0, 0, None] and plan.prefixes[0].tolist() == [1, 2, 3]
    assert plan.saved_tokens == 3


def test_budget_chunks_bound_tokens_and_run_long_ones_alone():
    chunks = budget_chunks([100, 200, 5000, 50, 50], 300)
    assert chunks == [[0, 1], [2], [3, 4]]


def test_varlen_arguments_follow_the_kernel_signature():
    from armorm.model.packed import varlen_kwargs

    def older(q, k, v, cu_q, cu_k, max_q, max_k, *, is_causal=False):
        pass

    def newer(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size=(-1, -1), enable_gqa=False):
        pass

    assert varlen_kwargs(older) == {"is_causal": True}  # GQA then by repeating k/v
    assert varlen_kwargs(newer) == {"enable_gqa": True, "window_size": (-1, 0)}  # bottom-right causal


@pytest.mark.parametrize("share", [True, False])
def test_cpu_attention_runs_the_fused_kernel(backbone, group, share):
    """3-D inputs made torch fall back to plain matrix math (an L×L score matrix per head, 2-20x slower)."""
    runner = PackedBackbone(backbone)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run(runner, group, share_prompts=share)
    ops = {event.key for event in profile.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops, sorted(o for o in ops if "attention" in o)
    assert "aten::_softmax" not in ops, "the math fallback ran"


def test_best_of_64_with_a_long_prompt_charges_the_prompt_once(backbone, reference):
    """Each response used to be charged its whole prompt: 64 responses to a 1.5k-token prompt under an 8192-token
    budget took 1 + 13 forwards. The prompt counts once per forward now: 1 for the prompt, 1 for the responses."""
    prompt = [{"role": "user", "content": "word " * 1500}]
    conversations = [prompt + [{"role": "assistant", "content": f"answer {i} " * 4}] for i in range(64)]
    rows = reference.parity_rows(conversations)
    runner = PackedBackbone(backbone, max_batch_tokens=8192)
    gate, reward = run(runner, rows)
    assert runner.last_stats.shared_prompts == 1
    assert runner.last_stats.forwards == 2, runner.last_stats
    assert rows.max_error(gate, reward) <= ATOL


def test_prompt_groups_run_a_wave_at_a_time(backbone, reference):
    """Distinct prompts whose keys/values would not fit one budget are cached a wave at a time (then freed)."""
    conversations = [[{"role": "user", "content": f"prompt {p} " + "word " * 300},
                      {"role": "assistant", "content": f"answer {r}"}] for p in range(6) for r in range(3)]
    rows = reference.parity_rows(conversations)
    runner = PackedBackbone(backbone, max_batch_tokens=700)
    cached = []
    forward = runner._forward
    runner._forward = lambda segments, cache, keep_kv, wanted: (
        cached.append(sum(cache.length(p) for p in range(len(cache.layers)))), forward(segments, cache, keep_kv,
                                                                                       wanted))[1]
    gate, reward = run(runner, rows)
    assert runner.last_stats.shared_prompts == 6
    assert max(cached) <= 700, f"cached prompt tokens per forward: {cached}"
    assert rows.max_error(gate, reward) <= ATOL


PEAK_SCRIPT = """
import resource, sys
import numpy as np, torch
from armorm.model.backbone import ArmoRMBackbone
from armorm.model.packed import PackedBackbone
from armorm.testing.random_checkpoint import TinySizes, random_parameters, tiny_config

# Keys/values as wide as the hidden state (8 of 8 heads): what a batch's cached prompts weigh shows.
config = tiny_config(TinySizes(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
                               num_key_value_heads=8, gating_hidden_dim=64))
state = {name: tensor.float() for name, tensor in random_parameters(config, seed=0).items()}
packed = PackedBackbone(ArmoRMBackbone.from_state_dict(config, state, torch.float32))
rng = np.random.default_rng(0)
ids, gates, rewards = [], [], []
for _ in range(16):  # distinct 6k-token prompts, 4 responses each
    prompt = rng.integers(0, 128000, 6000)
    for length in (100, 101, 102, 103):
        ids.append(np.concatenate([prompt, rng.integers(0, 128000, length)]))
        gates.append(5999)
        rewards.append(len(ids[-1]) - 1)
packed.run(ids[:4], np.array(gates[:4]), np.array(rewards[:4]))  # warm-up: kernels, allocator pools
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
packed.run(ids, np.array(gates), np.array(rewards))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_peak_memory_stays_bounded_with_many_distinct_long_prompts():
    """64 conversations on 16 distinct 6k-token prompts: the peak RSS of a fresh process grows by what one budget's
    work needs. Before, every prompt's keys/values stayed cached for the whole batch."""
    import subprocess
    import sys

    grown = int(subprocess.run([sys.executable, "-c", PEAK_SCRIPT], capture_output=True, text=True, check=True,
                               timeout=300).stdout.split()[-1])
    # Seen: 236 MiB, and 833 MiB before (all 16 prompts cached at once, 393 MB of keys/values alone).
    assert grown < 400 << 20, f"peak RSS grew by {grown / 2**20:.0f} MiB"


def cpu_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, window_size=(-1, -1), enable_gqa=False):
    """varlen_attn's contract on the CPU: per sequence, causal aligned bottom-right under window_size (-1, 0)."""
    out = torch.empty_like(query)
    for index in range(len(cu_seq_q) - 1):
        qs, qe, ks, ke = int(cu_seq_q[index]), int(cu_seq_q[index + 1]), int(cu_seq_k[index]), int(cu_seq_k[index + 1])
        assert qe - qs <= max_q and ke - ks <= max_k
        mask = torch.ones(qe - qs, ke - ks, dtype=torch.bool).tril(ke - ks - (qe - qs)) if window_size[1] == 0 else None
        attended = torch.nn.functional.scaled_dot_product_attention(
            query[qs:qe].transpose(0, 1)[None], key[ks:ke].transpose(0, 1)[None], value[ks:ke].transpose(0, 1)[None],
            attn_mask=mask, enable_gqa=enable_gqa)
        out[qs:qe] = attended[0].transpose(0, 1)
    return out


def cpu_varlen_without_gqa(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, is_causal=False):
    """An older signature: no native GQA (keys repeated per head by the caller), `is_causal` (flash-attn aligns it
    bottom-right)."""
    assert key.shape[1] == query.shape[1], "the caller repeats keys/values per query head"
    return cpu_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, window_size=(-1, 0) if is_causal else
                      (-1, -1))


@pytest.mark.parametrize("kernel", [cpu_varlen, cpu_varlen_without_gqa])
@pytest.mark.parametrize("share", [True, False])
def test_the_varlen_path_matches_the_reference(backbone, cases, kernel, share):
    """The GPU's bookkeeping (cumulative offsets, cached prompts before each response's keys, GQA) on the CPU, with
    a stand-in that keeps varlen_attn's contract: what the first GPU run would otherwise be the first to check."""
    runner = PackedBackbone(backbone, max_batch_tokens=2048)
    runner.varlen, runner.varlen_kwargs = kernel, varlen_kwargs(kernel)
    error = cases.max_error(*run(runner, cases, share_prompts=share))
    assert error <= ATOL, f"varlen path ({kernel.__name__}, share {share}) vs reference: {error:.3g}"
