"""The served model.py files driven in-process through a typed fake of the Triton stub module:
per-request errors, one response per request, batched math equal to the pure functions."""

import json

import numpy as np
import torch

from armorm.model import heads
from armorm.model.checkpoint import Checkpoint
from tests import fake_pb


def test_regression_model_fails_only_the_malformed_request(exported_repository, tiny_checkpoint, monkeypatch):
    model = fake_pb.load_model(exported_repository, "armorm_regression", monkeypatch)
    checkpoint = Checkpoint.load(tiny_checkpoint)
    weights = heads.HeadWeights.from_state_dict(checkpoint.state, checkpoint.config)
    hidden = [np.random.default_rng(i).standard_normal((n, 64)).astype(np.float32) for i, n in enumerate((1, 3))]
    requests = [fake_pb.request(reward_hidden=hidden[0]),
                fake_pb.request(reward_hidden=np.zeros((1, 63), np.float32)),
                fake_pb.request(reward_hidden=hidden[1])]
    responses = model.execute(requests)
    assert len(responses) == 3
    assert responses[1].has_error() and "shape [batch, 64]" in responses[1].error().message()
    assert responses[1].error().code() == fake_pb.TritonError.INVALID_ARG
    for response, rows in ((responses[0], hidden[0]), (responses[2], hidden[1])):
        assert not response.has_error()
        expected = heads.regression(torch.from_numpy(rows), weights.regression).numpy()
        np.testing.assert_allclose(response.output("rewards"), expected, rtol=1e-6, atol=1e-6)


def test_transform_model_outputs_score_column_and_coefficients(exported_repository, tiny_checkpoint, monkeypatch):
    model = fake_pb.load_model(exported_repository, "armorm_transform", monkeypatch)
    checkpoint = Checkpoint.load(tiny_checkpoint)
    weights = heads.HeadWeights.from_state_dict(checkpoint.state, checkpoint.config)
    rewards = np.random.default_rng(0).standard_normal((2, 19)).astype(np.float32)
    gating = np.random.default_rng(1).dirichlet(np.ones(19), 2).astype(np.float32)
    num_tokens = np.array([[3], [4]], np.int64)
    (response,) = model.execute([fake_pb.request(rewards=rewards, gating=gating, num_tokens=num_tokens)])
    assert response.output("score").shape == (2, 1) and response.output("coefficients").shape == (2, 19)
    score, coefficients = heads.transform(torch.from_numpy(rewards), torch.from_numpy(gating), weights.transform)
    np.testing.assert_allclose(response.output("score")[:, 0], score.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(response.output("coefficients"), coefficients.numpy(), rtol=1e-6, atol=1e-6)


def test_tokenizer_model_answers_each_request(exported_repository, monkeypatch):
    model = fake_pb.load_model(exported_repository, "armorm_tokenizer", monkeypatch)
    good = json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]).encode()
    requests = [fake_pb.request(messages=np.array([[good]], dtype=object)),
                fake_pb.request(messages=np.array([[b"[]"]], dtype=object)),
                fake_pb.request(other=np.array([[good]], dtype=object))]
    responses = model.execute(requests)
    assert not responses[0].has_error()
    assert responses[0].output("input_ids")[0, 0] == 128000
    assert int(responses[0].output("num_tokens")[0, 0]) == responses[0].output("input_ids").shape[1]
    assert "empty list" in responses[1].error().message()
    assert "send exactly one of the inputs 'messages'" in responses[2].error().message()
    assert responses[2].error().message().endswith("got neither")


def test_backbone_model_rejects_out_of_range_ids_alone(exported_repository, monkeypatch):
    model = fake_pb.load_model(exported_repository, "armorm_backbone", monkeypatch)
    good = np.array([[128000, 128006, 882, 128007, 271, 13347, 128009, 128006, 78191, 128007, 271, 9906, 128009]])
    positions = {"gate_position": np.array([[6]]), "reward_position": np.array([[12]])}
    bad = good.copy()
    bad[0, 3] = 200000
    responses = model.execute([fake_pb.request(input_ids=good, **positions),
                               fake_pb.request(input_ids=bad, **positions),
                               fake_pb.request(input_ids=good, gate_position=np.array([[40]]),
                                               reward_position=np.array([[12]]))])
    assert not responses[0].has_error() and responses[0].output("reward_hidden").shape == (1, 64)
    assert "input_ids must lie in [0, 128257)" in responses[1].error().message()
    assert "must lie in [0, 13)" in responses[2].error().message()
    long = np.full((1, model.step.max_tokens + 1), 13347)
    long[0, : good.shape[1]] = good[0]
    (refused,) = model.execute([fake_pb.request(input_ids=long, gate_position=np.array([[6]]),
                                                reward_position=np.array([[model.step.max_tokens]]))])
    assert f"takes at most {model.step.max_tokens} tokens" in refused.error().message()


def test_a_request_that_breaks_the_batched_tokenizer_fails_alone(exported_repository, monkeypatch):
    """Whatever a library raises on one request's content, answer_each isolates it: neighbours are answered."""
    model = fake_pb.load_model(exported_repository, "armorm_tokenizer", monkeypatch)
    render = model.step.tokenizer.render

    def fragile(messages):
        if "boom" in messages[-1]["content"]:
            raise RuntimeError("a library bug")
        return render(messages)

    monkeypatch.setattr(model.step.tokenizer, "render", fragile)
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    bad = [conversation[0], {"role": "assistant", "content": "boom"}]
    requests = [fake_pb.request(messages=np.array([[json.dumps(m).encode()]], dtype=object))
                for m in (conversation, bad, conversation)]
    responses = model.execute(requests)
    assert [r.has_error() for r in responses] == [False, True, False]
    assert responses[1].error().code() == fake_pb.TritonError.INVALID_ARG
    assert "could not be tokenized (RuntimeError: a library bug)" in responses[1].error().message()
    np.testing.assert_array_equal(responses[0].output("input_ids"), responses[2].output("input_ids"))


def test_transform_passes_rewards_gating_and_num_tokens_through(exported_repository, monkeypatch):
    model = fake_pb.load_model(exported_repository, "armorm_transform", monkeypatch)
    rewards = np.random.default_rng(1).standard_normal((3, 19)).astype(np.float32)
    gating = np.random.default_rng(2).random((3, 19)).astype(np.float32)
    num_tokens = np.array([[5], [7], [9]], np.int64)
    (response,) = model.execute([fake_pb.request(rewards=rewards, gating=gating, num_tokens=num_tokens)])
    np.testing.assert_array_equal(response.output("rewards"), rewards)
    np.testing.assert_array_equal(response.output("gating"), gating)
    np.testing.assert_array_equal(response.output("num_tokens"), num_tokens)


def test_a_failing_head_answers_internal_and_counts_the_aborted_requests(exported_repository, monkeypatch):
    from armorm.serving import metrics

    model = fake_pb.load_model(exported_repository, "armorm_regression", monkeypatch)

    calls = []

    def broken(inputs):
        calls.append(len(inputs["reward_hidden"]))
        raise RuntimeError("simulated device failure")

    monkeypatch.setattr(model, "compute", broken)
    hidden = np.zeros((2, 64), np.float32)
    responses = model.execute([fake_pb.request(reward_hidden=hidden),
                               fake_pb.request(reward_hidden=np.zeros((1, 63), np.float32)),
                               fake_pb.request(reward_hidden=hidden)])
    codes = [r.error().code() for r in responses]
    assert codes == [fake_pb.TritonError.INTERNAL, fake_pb.TritonError.INVALID_ARG, fake_pb.TritonError.INTERNAL]
    assert "RuntimeError" in responses[0].error().message()
    # Bisection: [r0 r1 r2] fails → [r0] fails alone; [r1 r2] (r2's rows) fails → [r1] is refused unrun, [r2] fails.
    assert calls == [4, 2, 2, 2], "the valid rows together once, then halves until each valid request is alone"
    # Only the two valid requests count: INVALID_ARGUMENT answers a direct caller, never the ensemble.
    assert fake_pb.MetricFamily.families[metrics.ABORTED].values[(("model", "armorm_regression"),)] == 2


def test_model_parameters_parse_strictly():
    import pytest

    from armorm.serving.triton_glue import ModelContext

    context = ModelContext("m", None, {"on": "TRUE", "off": "0", "odd": "maybe", "threads": "0"}, "CPU", 0)
    assert context.bool_parameter("on", False) is True
    assert context.bool_parameter("off", True) is False
    assert context.bool_parameter("absent", True) is True
    with pytest.raises(ValueError, match="odd='maybe' must be true or false"):
        context.bool_parameter("odd", False)


def test_the_threads_parameter_sets_torchs_threads_and_zero_keeps_its_choice():
    from armorm.serving.triton_glue import ModelContext

    def context(threads: str | None) -> ModelContext:
        return ModelContext("m", None, {} if threads is None else {"threads": threads}, "CPU", 0)

    original = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert context("0").set_torch_threads(1) == 3 and torch.get_num_threads() == 3, "0: torch's own choice"
        assert context("2").set_torch_threads(1) == 2 and torch.get_num_threads() == 2, "the parameter wins"
        assert context(None).set_torch_threads(1) == 1 and torch.get_num_threads() == 1, "absent: the default"
    finally:
        torch.set_num_threads(original)


def test_an_unknown_runtime_names_the_registered_ones(tmp_path):
    import pytest

    from armorm.runtimes import RUNTIMES, RuntimeContext, create_runtime
    from armorm.runtimes.parameters import Parameters

    with pytest.raises(ValueError, match="unknown backbone runtime 'nope'; use one of " + ", ".join(RUNTIMES)):
        create_runtime("nope", RuntimeContext(tmp_path, {}, "cpu", Parameters("armorm_backbone")))


def test_gating_model_computes_each_distinct_prompt_row_once(exported_repository, tiny_checkpoint, monkeypatch):
    model = fake_pb.load_model(exported_repository, "armorm_gating", monkeypatch)
    checkpoint = Checkpoint.load(tiny_checkpoint)
    weights = heads.HeadWeights.from_state_dict(checkpoint.state, checkpoint.config)
    prompts = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
    requests = [fake_pb.request(gate_hidden=prompts[[0, 0, 0]]), fake_pb.request(gate_hidden=prompts[[1, 0]])]
    seen = []
    real = heads.gating
    monkeypatch.setattr(heads, "gating", lambda rows, w: seen.append(len(rows)) or real(rows, w))
    responses = model.execute(requests)
    assert seen == [2], "two distinct prompt rows in the batch, computed once each in one call"
    expected = real(torch.from_numpy(prompts), weights.gating).numpy()
    np.testing.assert_allclose(responses[0].output("gating"), expected[[0, 0, 0]], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(responses[1].output("gating"), expected[[1, 0]], rtol=1e-6, atol=1e-6)
