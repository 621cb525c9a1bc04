"""GPU parity of the packed runtime (varlen attention, bf16) against the Hugging Face reference."""

import numpy as np
import pytest
import torch

from armorm.backbone import ArmoRMBackbone
from armorm.checkpoint import Checkpoint
from armorm.packed import PackedBackbone
from armorm.reference import ArmoRMReference
from tests.conversations import varied_conversations

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
BF16_ATOL = 5e-2


def test_packed_bf16_on_gpu_matches_the_reference(tiny_checkpoint):
    checkpoint = Checkpoint.load(tiny_checkpoint)
    reference = ArmoRMReference(checkpoint, device="cuda", dtype=torch.bfloat16)
    packed = PackedBackbone(ArmoRMBackbone.from_state_dict(checkpoint.config, checkpoint.state,
                                                           torch.bfloat16).to("cuda"))
    prompt = [{"role": "user", "content": "Name a fruit."}]
    conversations = varied_conversations() + [prompt + [{"role": "assistant", "content": r}]
                                              for r in ("Apple.", "A mango, ripe and sweet.", "Kiwi " * 30)]
    tokens = [reference.tokenizer.tokenize(m) for m in conversations]
    gate, reward = packed.run([t.input_ids for t in tokens], np.array([t.gate_position for t in tokens]),
                              np.array([t.reward_position for t in tokens]))
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
        has_varlen = torch.cuda.get_device_capability() >= (8, 0)
    except ImportError:
        has_varlen = False
    assert (packed.varlen is not None) == has_varlen, "flash varlen attention must be used where it can be"
    assert packed.last_stats["shared_prompts"] == 1
    for index, messages in enumerate(conversations):
        gate_ref, reward_ref, _ = reference.hidden_rows(messages)
        scale = float(reward_ref.float().abs().max())
        assert float((reward[index] - reward_ref.float()).abs().max()) <= BF16_ATOL * max(1.0, scale), index
        assert float((gate[index] - gate_ref.float()).abs().max()) <= BF16_ATOL * max(1.0, scale), index
