"""GPU parity of the packed runtime (varlen attention, bf16) against the Hugging Face reference."""

import numpy as np
import pytest
import torch

from armorm.model.backbone import ArmoRMBackbone
from armorm.model.checkpoint import Checkpoint
from armorm.model.packed import PackedBackbone
from armorm.reference import ArmoRMReference
from tests.conversations import varied_conversations

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
BF16_ATOL = 5e-2


def test_packed_bf16_on_gpu_matches_the_reference(tiny_checkpoint):
    checkpoint = Checkpoint.load(tiny_checkpoint)
    reference = ArmoRMReference(checkpoint, device="cuda", dtype=torch.bfloat16)
    module = ArmoRMBackbone.from_state_dict(checkpoint.config, checkpoint.state, torch.bfloat16).to("cuda")
    # Flash varlen is required on SM80+ ("varlen" raises where this torch lacks it); older GPUs fall back.
    flash = torch.cuda.get_device_capability() >= (8, 0)
    packed = PackedBackbone(module, attention="varlen" if flash else "auto")
    assert (packed.attention_name == "varlen (flash)") == flash
    prompt = [{"role": "user", "content": "Name a fruit."}]
    conversations = varied_conversations() + [prompt + [{"role": "assistant", "content": r}]
                                              for r in ("Apple.", "A mango, ripe and sweet.", "Kiwi " * 30)]
    rows = reference.parity_rows(conversations)
    gate, reward = packed.run(rows.input_ids, rows.gate_positions, rows.reward_positions)
    assert packed.last_stats.shared_prompts == 1
    gate, reward = gate.float().cpu().numpy(), reward.float().cpu().numpy()
    for index in range(len(rows)):
        scale = max(1.0, float(np.abs(rows.reward_hidden[index]).max()))
        assert float(np.abs(reward[index] - rows.reward_hidden[index]).max()) <= BF16_ATOL * scale, index
        assert float(np.abs(gate[index] - rows.gate_hidden[index]).max()) <= BF16_ATOL * scale, index
