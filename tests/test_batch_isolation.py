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
    run = model.step.runtime.run
    forwards: list[int] = []

    def fragile(input_ids, gate_positions, reward_positions):
        forwards.append(len(input_ids))
        if any((row == POISON).any() for row in input_ids):
            raise RuntimeError("a kernel failed on this conversation")
        return run(input_ids, gate_positions, reward_positions)

    monkeypatch.setattr(model.step.runtime, "run", fragile)
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


def test_a_broken_device_context_answers_unavailable_and_restarts_the_process(exported_repository, monkeypatch):
    """A CUDA failure other than out-of-memory breaks the context for every later call: no bisection (it would fail
    2·log₂ n more times), every request UNAVAILABLE (the client retries), and the process exits once the responses
    are out, so the supervisor restarts the server with a fresh context."""
    import threading

    model = fake_pb.load_model(exported_repository, "armorm_backbone", monkeypatch)
    calls: list[int] = []
    exits: list[tuple] = []

    def broken(input_ids, gate_positions, reward_positions):
        calls.append(len(input_ids))
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    class RecordedTimer:
        def __init__(self, delay, function, args=()):
            exits.append((delay, function, args))

        def start(self):
            pass

    monkeypatch.setattr(model.step.runtime, "run", broken)
    monkeypatch.setattr(threading, "Timer", RecordedTimer)
    responses = model.execute([fake_pb.request(input_ids=conversation(False), **POSITIONS) for _ in range(8)])
    assert calls == [8], "no bisection of a broken context"
    assert all(r.error().code() == fake_pb.TritonError.UNAVAILABLE for r in responses)
    assert "retry" in responses[0].error().message()
    import os

    assert [(function, args) for _, function, args in exits] == [(os._exit, (3,))]
    later = model.execute([fake_pb.request(input_ids=conversation(False), **POSITIONS)])
    assert later[0].error().code() == fake_pb.TritonError.UNAVAILABLE and calls == [8], "nothing runs any more"


def test_out_of_memory_frees_the_cache_and_bisects(exported_repository, monkeypatch):
    import torch

    model = fake_pb.load_model(exported_repository, "armorm_backbone", monkeypatch)
    run = model.step.runtime.run
    freed: list[int] = []

    def tight(input_ids, gate_positions, reward_positions):
        if len(input_ids) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return run(input_ids, gate_positions, reward_positions)

    monkeypatch.setattr(model.step.runtime, "run", tight)
    monkeypatch.setattr(model.step.runtime, "free_memory", lambda: freed.append(1))
    responses = model.execute([fake_pb.request(input_ids=conversation(False), **POSITIONS) for _ in range(8)])
    assert not any(r.has_error() for r in responses), "halves small enough to fit are answered"
    assert len(freed) == 3, "the cache is freed after each out-of-memory batch (8, then 4 and 4)"
    assert not model.step.broken


def test_device_failures_are_told_apart():
    import torch

    from armorm.serving.triton_glue import BROKEN_DEVICE, OUT_OF_MEMORY, device_failure

    assert device_failure(torch.cuda.OutOfMemoryError("CUDA out of memory")) == OUT_OF_MEMORY
    assert device_failure(RuntimeError("CUDA error: device-side assert triggered")) == BROKEN_DEVICE
    assert device_failure(RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx")) == BROKEN_DEVICE
    assert device_failure(ValueError("a kernel failed on this conversation")) is None
