"""The model card's golden values; needs the real checkpoint (ARMORM_CHECKPOINT=dir or hub id)."""

import os

import numpy as np
import pytest
import torch

from armorm_client.samples import model_card_conversations

pytestmark = [pytest.mark.real_weights, pytest.mark.slow]
CHECKPOINT = os.environ.get("ARMORM_CHECKPOINT")


@pytest.mark.skipif(not CHECKPOINT, reason="set ARMORM_CHECKPOINT to the real ArmoRM checkpoint to run")
def test_model_card_golden_values():
    from armorm.reference import ArmoRMReference

    device = "cuda" if torch.cuda.is_available() else "cpu"
    reference = ArmoRMReference(CHECKPOINT, device=device, dtype=torch.bfloat16)
    result = reference.score(model_card_conversations()[0])
    # Third-party reruns of the model card's example differ by up to ~0.03 on this scale.
    np.testing.assert_allclose(result.rewards[:5] * 5 - 0.5, [2.78125, 2.859375, 3.484375, 1.3847656, 1.296875],
                               atol=0.06)
    top = result.top_objectives(3)
    assert [name for name, _ in top] == ["code-complexity", "helpsteer-verbosity",
                                         "ultrafeedback-instruction_following"]
    np.testing.assert_allclose([value for _, value in top], [0.19922, -0.10864, 0.07861], atol=0.01)
    assert abs(result.score - float(np.dot(result.rewards, result.coefficients))) <= 1e-3
