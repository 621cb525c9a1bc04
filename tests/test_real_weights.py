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


# Skywork-Reward-V2-Llama-3.1-8B's README: its two example scores (bf16, flash attention; SGLang gives 23.125 and
# 3.578125, so implementations differ by about 0.13 on this scale).
SKYWORK = os.environ.get("SKYWORK_CHECKPOINT")
SKYWORK_PROMPT = ("Jane has 12 apples. She gives 4 apples to her friend Mark, then buys 1 more apple, and finally "
                  "splits all her apples equally among herself and her 2 siblings. How many apples does each person "
                  "get?")
SKYWORK_RESPONSES = (
    "1. Jane starts with 12 apples and gives 4 to Mark. 12 - 4 = 8. Jane now has 8 apples.\n2. Jane buys 1 more "
    "apple. 8 + 1 = 9. Jane now has 9 apples.\n3. Jane splits the 9 apples equally among herself and her 2 siblings "
    "(3 people in total). 9 ÷ 3 = 3 apples each. Each person gets 3 apples.",
    "1. Jane starts with 12 apples and gives 4 to Mark. 12 - 4 = 8. Jane now has 8 apples.\n2. Jane buys 1 more "
    "apple. 8 + 1 = 9. Jane now has 9 apples.\n3. Jane splits the 9 apples equally among her 2 siblings (2 people in "
    "total). 9 ÷ 2 = 4.5 apples each. Each person gets 4 apples.",
)
SKYWORK_GOLDEN = (23.0, 3.59375)


@pytest.mark.skipif(not SKYWORK, reason="set SKYWORK_CHECKPOINT to Skywork/Skywork-Reward-V2-Llama-3.1-8B")
def test_skywork_v2_golden_values_through_the_served_stack(tmp_path):
    """The real Skywork-Reward-V2-Llama-3.1-8B exported as a Bradley–Terry model, served, scored over gRPC."""
    from armorm.testing.serve_process import ServeProcess
    from armorm_client import ArmoRMClient
    from armorm_export.repository import ExportOptions, export_repository

    gpu = torch.cuda.is_available()
    repository = export_repository(SKYWORK, tmp_path / "repository",
                                   ExportOptions(instance_kind="gpu" if gpu else "cpu", onnx=False, max_tokens=16384,
                                                 atol=1e-3 if gpu else 1e-4), name="skywork")
    conversations = [[{"role": "user", "content": SKYWORK_PROMPT}, {"role": "assistant", "content": response}]
                     for response in SKYWORK_RESPONSES]
    with ServeProcess(repository, tmp_path / "logs", startup_timeout=1800) as server:
        with ArmoRMClient(server.grpc_url, model="skywork", timeout_s=600) as client:
            scores = [client.score(c).score for c in conversations]
    np.testing.assert_allclose(scores, SKYWORK_GOLDEN, atol=0.3)
