"""The head math against explicit loops written from the model card's `modeling_custom.py` (regression layer, gating
MLP with softmax(x / temperature) · logit_scale, score = Σ gating · (rewards @ T)), not from armorm.model.heads."""

import numpy as np
import pytest
import torch

from armorm.model import heads
from armorm_client.contract import NUM_OBJECTIVES


@pytest.fixture
def weights():
    gen = torch.Generator().manual_seed(0)
    hidden, width = 12, 8
    sizes = [hidden, width, width, width, NUM_OBJECTIVES]
    layers = tuple((torch.randn(sizes[i + 1], sizes[i], generator=gen), torch.randn(sizes[i + 1], generator=gen))
                   for i in range(4))
    transform = torch.eye(NUM_OBJECTIVES)
    transform[4] -= torch.rand(NUM_OBJECTIVES, generator=gen)
    transform[4, 4] = 1.0
    return heads.HeadWeights(
        heads.RegressionWeights(torch.randn(NUM_OBJECTIVES, hidden, generator=gen)),
        heads.GatingWeights(layers, logit_scale=2.5, temperature=10.0),
        heads.TransformWeights(transform),
    )


def explicit_gating(x: np.ndarray, w: heads.GatingWeights) -> np.ndarray:
    for i, (weight, bias) in enumerate(w.layers):
        x = x @ weight.numpy().T + bias.numpy()
        if i < 3:
            x = np.maximum(x, 0)
    z = x / w.temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True) * w.logit_scale


def test_regression_is_linear_without_bias(weights):
    x = torch.randn(3, 12)
    expected = x.numpy() @ weights.regression.weight.numpy().T
    np.testing.assert_allclose(heads.regression(x, weights.regression).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_gating_is_tempered_softmax_times_logit_scale(weights):
    x = torch.randn(3, 12)
    out = heads.gating(x, weights.gating).numpy()
    np.testing.assert_allclose(out, explicit_gating(x.numpy(), weights.gating), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.sum(axis=-1), 2.5, rtol=1e-5)


def test_transform_score_matches_the_original_formula_and_the_model_card_identity(weights):
    rewards, gating = torch.randn(4, NUM_OBJECTIVES), torch.rand(4, NUM_OBJECTIVES)
    score, coefficients = heads.transform(rewards, gating, weights.transform)
    r, g, t = rewards.numpy().astype(np.float64), gating.numpy().astype(np.float64), weights.transform.matrix.numpy()
    expected = np.array([sum(g[b, j] * sum(r[b, i] * t[i, j] for i in range(19)) for j in range(19)) for b in range(4)])
    np.testing.assert_allclose(score.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(coefficients.numpy(), g @ t.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose((r * coefficients.numpy()).sum(-1), score.numpy(), atol=1e-4)


def test_verbosity_penalty_subtracts_lambda_times_verbosity_reward(weights):
    rewards = torch.zeros(1, NUM_OBJECTIVES)
    rewards[0, 4] = 1.0  # only verbosity
    gating = torch.zeros(1, NUM_OBJECTIVES)
    gating[0, 0] = 1.0  # only objective 0
    score, _ = heads.transform(rewards, gating, weights.transform)
    assert score.item() == pytest.approx(weights.transform.matrix[4, 0].item())
    assert score.item() < 0


def test_head_weights_round_trip_through_files(weights, tmp_path):
    weights.regression.save(tmp_path / "r.safetensors")
    weights.gating.save(tmp_path / "g.safetensors")
    weights.transform.save(tmp_path / "t.safetensors")
    gating = heads.GatingWeights.load(tmp_path / "g.safetensors")
    assert gating.logit_scale == 2.5 and gating.temperature == 10.0 and len(gating.layers) == 4
    regression = heads.RegressionWeights.load(tmp_path / "r.safetensors")
    torch.testing.assert_close(regression.weight, weights.regression.weight)
    torch.testing.assert_close(heads.TransformWeights.load(tmp_path / "t.safetensors").matrix, weights.transform.matrix)


def test_missing_head_parameters_are_named():
    from armorm.testing.random_checkpoint import random_parameters, tiny_config

    config = tiny_config()
    state = random_parameters(config, seed=0)
    del state["gating.logit_scale"]
    with pytest.raises(KeyError, match="gating.logit_scale"):
        heads.HeadWeights.from_state_dict(state, config)
