"""A failing dynamic batch is bisected: the culprit fails alone, its neighbours are answered, and finding it costs
at most 2·log₂(n) extra backbone forwards (replaying row by row cost n)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from armorm.serving.triton_glue import answer_each
from tests import fake_pb

# "<|begin_of_text|>user: Hi<|eot_id|>assistant: Hello<|eot_id|>" as ids, with the two positions the tokenizer finds.
CONVERSATION = np.array([[128000, 128006, 882, 128007, 271, 13347, 128009, 128006, 78191, 128007, 271, 9906, 128009]])
POSITIONS = {"gate_position": np.array([[6]]), "reward_position": np.array([[12]])}
POISON = 9907  # a valid id the wrapped runtime below refuses to run


def conversation(poisoned: bool) -> np.ndarray:
    ids = CONVERSATION.copy()
    if poisoned:
        ids[0, 11] = POISON
    return ids


@pytest.mark.parametrize(("batch", "culprits"), [(64, (37,)), (64, (0,)), (64, (63,)), (7, (3,)), (16, (2, 13))])
def test_a_failed_backbone_batch_is_bisected(exported_repository, monkeypatch, batch, culprits):
    model = fake_pb.load_model(exported_repository, "armorm_backbone", monkeypatch)
    run = model.runtime.run
    forwards: list[int] = []

    def fragile(input_ids, gate_positions, reward_positions):
        forwards.append(len(input_ids))
        if any((row == POISON).any() for row in input_ids):
            raise RuntimeError("a kernel failed on this conversation")
        return run(input_ids, gate_positions, reward_positions)

    monkeypatch.setattr(model.runtime, "run", fragile)
    alone = model.execute([fake_pb.request(input_ids=conversation(False), **POSITIONS)])[0].output("reward_hidden")
    forwards.clear()

    responses = model.execute([fake_pb.request(input_ids=conversation(i in culprits), **POSITIONS)
                               for i in range(batch)])

    assert [i for i, r in enumerate(responses) if r.has_error()] == list(culprits)
    for index in culprits:
        assert responses[index].error().code() == fake_pb.TritonError.INTERNAL
    for index, response in enumerate(responses):
        if index not in culprits:
            np.testing.assert_allclose(response.output("reward_hidden"), alone, rtol=1e-5, atol=1e-6)
    depth = math.ceil(math.log2(batch))
    assert forwards[0] == batch
    assert len(forwards) - 1 <= 2 * depth * len(culprits), forwards
    assert sum(forwards) <= batch * (1 + 2 * len(culprits)), "bisection ran more conversations than its bound"


def test_answer_each_answers_every_request_in_order_whatever_fails():
    calls: list[list[int]] = []

    def respond(batch):
        calls.append(list(batch))
        if any(request % 16 == 0 for request in batch):
            raise ValueError("bad")
        return [f"ok {request}" for request in batch]

    responses = answer_each(fake_pb.module(), list(range(1, 33)), respond, lambda pb, err: f"failed: {err}")
    assert responses == ["failed: bad" if r % 16 == 0 else f"ok {r}" for r in range(1, 33)]
    assert calls[0] == list(range(1, 33))
    assert len(calls) <= 1 + 2 * 5 * 2, "more calls than bisection needs for two culprits in 32"
