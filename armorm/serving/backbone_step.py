"""The backbone step's batch work, apart from its Triton glue (model_repository/armorm_backbone/1/model.py): one
runtime call for the dynamic batch, its metrics, and what a device failure does. `pb` is the stub module."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
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

# Computed rows kept for a second model on a shared backbone (each a few KB to 32 KB at hidden 4096).
RECENT_ROWS = 256
# Seconds between answering a broken context's requests and the exit: the stub sends the responses meanwhile.
RESTART_GRACE_S = 1.0
EXIT_BROKEN_DEVICE = 3


def sequence_key(ids: np.ndarray, gate: int, reward: int) -> bytes:
    """A conversation's identity for the shared-backbone cache: a 128-bit hash of its ids and positions."""
    digest = hashlib.blake2b(np.ascontiguousarray(ids, dtype=np.int64).tobytes(), digest_size=16)
    digest.update(f"|{int(gate)}|{int(reward)}".encode())
    return digest.digest()


class BackboneStep:
    def __init__(self, pb: Any, name: str, runtime: BackboneRuntime, vocab_size: int, max_tokens: int,
                 dedup_identical: bool = False) -> None:
        self.pb, self.runtime, self.vocab_size, self.max_tokens = pb, runtime, vocab_size, max_tokens
        # Off unless several models share this backbone: perf_analyzer repeats one input, which would then be
        # computed once per batch and overstate throughput.
        self.dedup_identical = dedup_identical
        # Rows just computed, kept for one more reader: the other model on this backbone sends the same ids in a
        # moment (a mixture calls its members at once), in this batch or a later one. Bounded; each entry read once.
        self.recent: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()
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
            count = len(batch.input_ids)
            first, inverse = (distinct_sequences(batch.input_ids, batch.gate_positions, batch.reward_positions)
                              if self.dedup_identical else (list(range(count)), np.arange(count)))
            keys = [sequence_key(batch.input_ids[i], batch.gate_positions[i], batch.reward_positions[i])
                    for i in first] if self.dedup_identical else []
            cached = {slot: self.recent.pop(key) for slot, key in enumerate(keys) if key in self.recent}
            todo = [slot for slot in range(len(first)) if slot not in cached]
            rows: dict[int, tuple[np.ndarray, np.ndarray]] = dict(cached)
            if todo:
                try:
                    gate_hidden, reward_hidden, stats = self.runtime.run(
                        [batch.input_ids[first[s]] for s in todo], batch.gate_positions[[first[s] for s in todo]],
                        batch.reward_positions[[first[s] for s in todo]])
                except Exception as err:
                    failure = device_failure(err)
                    if failure == BROKEN_DEVICE:  # every later call would fail too: restart the process
                        return self.restart(requests, err)
                    if failure == OUT_OF_MEMORY:
                        self.runtime.free_memory()
                    raise  # answer_each halves the batch until the culprit is alone (or the pieces fit)
                self.metrics.record(stats)
                for index, slot in enumerate(todo):
                    rows[slot] = (gate_hidden[index], reward_hidden[index])
                    if self.dedup_identical:
                        self.remember(keys[slot], rows[slot])
            gate_rows = np.stack([rows[int(slot)][0] for slot in inverse])
            reward_rows = np.stack([rows[int(slot)][1] for slot in inverse])
            batch.answer(self.pb, gate_rows, reward_rows)
        return batch.responses

    def remember(self, key: bytes, rows: tuple[np.ndarray, np.ndarray]) -> None:
        self.recent[key] = rows
        while len(self.recent) > RECENT_ROWS:
            self.recent.popitem(last=False)

    def restart(self, requests: Sequence[Any], err: Exception) -> list[Any]:
        """Answer UNAVAILABLE (retryable) and exit shortly after, once the responses are out: the supervisor sees the
        model process die and restarts the server with a fresh device context (not ready meanwhile)."""
        self.broken = (f"the backbone's GPU context failed ({type(err).__name__}); the model restarts: "
                       "retry shortly")
        self.pb.Logger.log_error(f"{self.broken}: {err!r}")
        threading.Timer(RESTART_GRACE_S, os._exit, args=(EXIT_BROKEN_DEVICE,)).start()
        return [unavailable(self.pb, self.broken) for _ in requests]
