"""The model card's golden values; needs the real checkpoint (ARMORM_CHECKPOINT=dir or hub id)."""

import os

import numpy as np
import pytest
import torch

from armorm_client.samples import model_card_conversations

pytestmark = [pytest.mark.real_weights, pytest.mark.slow]
CHECKPOINT = os.environ.get("ARMORM_CHECKPOINT")


GOLDEN_REWARDS = [2.78125, 2.859375, 3.484375, 1.3847656, 1.296875]  # rewards[:5] * 5 - 0.5
GOLDEN_TOP = [("code-complexity", 0.19922), ("helpsteer-verbosity", -0.10864),
              ("ultrafeedback-instruction_following", 0.07861)]
needs_checkpoint = pytest.mark.skipif(not CHECKPOINT, reason="set ARMORM_CHECKPOINT to the real ArmoRM checkpoint")


def check_golden(result) -> None:
    # Third-party reruns of the model card's example differ by up to ~0.03 on this scale.
    np.testing.assert_allclose(np.asarray(result.rewards[:5]) * 5 - 0.5, GOLDEN_REWARDS, atol=0.06)
    top = result.top_objectives(3)
    assert [name for name, _ in top] == [name for name, _ in GOLDEN_TOP]
    np.testing.assert_allclose([value for _, value in top], [value for _, value in GOLDEN_TOP], atol=0.01)
    assert abs(result.score - float(np.dot(result.rewards, result.coefficients))) <= 1e-3


@needs_checkpoint
def test_model_card_golden_values():
    from armorm.reference import ArmoRMReference

    device = "cuda" if torch.cuda.is_available() else "cpu"
    reference = ArmoRMReference(CHECKPOINT, device=device, dtype=torch.bfloat16)
    check_golden(reference.score(model_card_conversations()[0]))


@needs_checkpoint
def test_model_card_golden_values_through_the_served_stack(tmp_path):
    """The real checkpoint exported (--no-onnx), served by armorm-serve, scored over gRPC by the client."""
    from armorm.testing.serve_process import ServeProcess
    from armorm_client import ArmoRMClient
    from armorm_export.repository import ExportOptions, export_repository

    gpu = torch.cuda.is_available()
    repository = export_repository(CHECKPOINT, tmp_path / "repository",
                                   ExportOptions(instance_kind="gpu" if gpu else "cpu", onnx=False,
                                                 atol=1e-3 if gpu else 1e-4))
    with ServeProcess(repository, tmp_path / "logs", startup_timeout=1800) as server:
        with ArmoRMClient(server.grpc_url, timeout_s=600) as client:
            check_golden(client.score(model_card_conversations()[0]))
