"""The backbone step's batch work, apart from its Triton glue (model_repository/armorm_backbone/1/model.py): one
runtime call for the dynamic batch, its metrics, and what a device failure does. `pb` is the stub module."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from armorm.runtimes import BackboneRuntime
from armorm.serving.codec import distinct_sequences
from armorm.serving.metrics import AbortedRequests, BackboneMetrics
from armorm.serving.triton_glue import (
    BROKEN_DEVICE,
    OUT_OF_MEMORY,
    BackboneBatch,
    answer_each,
    device_failure,
    failed_internally,
    unavailable,
)

# Seconds between answering a broken context's requests and the exit: the stub sends the responses meanwhile.
RESTART_GRACE_S = 1.0
EXIT_BROKEN_DEVICE = 3


class BackboneStep:
    def __init__(self, pb: Any, name: str, runtime: BackboneRuntime, vocab_size: int, max_tokens: int,
                 dedup_identical: bool = False) -> None:
        self.pb, self.runtime, self.vocab_size, self.max_tokens = pb, runtime, vocab_size, max_tokens
        # Off unless several models share this backbone: perf_analyzer repeats one input, which would then be
        # computed once per batch and overstate throughput.
        self.dedup_identical = dedup_identical
        self.metrics = BackboneMetrics(pb)
        self.aborted = AbortedRequests(pb, name)
        self.broken: str | None = None  # why the device context is unusable; the process is on its way out

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        if self.broken:
            return [unavailable(self.pb, self.broken) for _ in requests]
        responses = answer_each(self.pb, requests, self.respond, failed_internally)
        self.aborted.count(responses)
        return responses

    def respond(self, requests: Sequence[Any]) -> list[Any]:
        batch = BackboneBatch.gather(self.pb, requests, self.vocab_size, self.max_tokens)
        if batch.input_ids:
            first, inverse = (distinct_sequences(batch.input_ids, batch.gate_positions, batch.reward_positions)
                              if self.dedup_identical else (list(range(len(batch.input_ids))), np.arange(0)))
            try:
                gate_hidden, reward_hidden, stats = self.runtime.run([batch.input_ids[i] for i in first],
                                                                     batch.gate_positions[first],
                                                                     batch.reward_positions[first])
            except Exception as err:
                failure = device_failure(err)
                if failure == BROKEN_DEVICE:  # every later call would fail too: restart the process
                    return self.restart(requests, err)
                if failure == OUT_OF_MEMORY:
                    self.runtime.free_memory()
                raise  # answer_each halves the batch until the culprit is alone (or the pieces fit)
            self.metrics.record(stats)
            if self.dedup_identical and len(first) < len(inverse):
                gate_hidden, reward_hidden = gate_hidden[inverse], reward_hidden[inverse]
            batch.answer(self.pb, gate_hidden, reward_hidden)
        return batch.responses

    def restart(self, requests: Sequence[Any], err: Exception) -> list[Any]:
        """Answer UNAVAILABLE (retryable) and exit shortly after, once the responses are out: the supervisor sees the
        model process die and restarts the server with a fresh device context (not ready meanwhile)."""
        self.broken = (f"the backbone's GPU context failed ({type(err).__name__}); the model restarts: "
                       "retry shortly")
        self.pb.Logger.log_error(f"{self.broken}: {err!r}")
        threading.Timer(RESTART_GRACE_S, os._exit, args=(EXIT_BROKEN_DEVICE,)).start()
        return [unavailable(self.pb, self.broken) for _ in requests]
