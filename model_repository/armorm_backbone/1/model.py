"""Triton glue for the backbone: ragged batches of token ids → the two hidden rows per conversation.

The runtime (config parameter `runtime`) comes from armorm.runtimes; request assembly and splitting are
armorm.serving.triton_glue.BackboneBatch.
"""

import json
import os
import threading

import triton_python_backend_utils as pb

from armorm.runtimes import DEFAULT_RUNTIME, RuntimeContext, create_runtime
from armorm.serving.metrics import AbortedRequests, BackboneMetrics
from armorm.serving.triton_glue import (
    BROKEN_DEVICE,
    OUT_OF_MEMORY,
    BackboneBatch,
    ModelContext,
    answer_each,
    device_failure,
    failed_internally,
    unavailable,
)
from armorm_client.contract import BACKBONE_CONFIG


class TritonPythonModel:
    def initialize(self, args):
        context = ModelContext.from_args(args)
        config = json.loads((context.version_dir / BACKBONE_CONFIG).read_text())
        runtime_context = RuntimeContext(context.version_dir, config, context.torch_device(), context.params)
        self.runtime = create_runtime(context.parameter("runtime", DEFAULT_RUNTIME), runtime_context)
        self.vocab_size = int(config["vocab_size"])
        self.max_tokens = int(config["max_position_embeddings"])
        self.metrics = BackboneMetrics(pb)
        self.broken = None  # why the device context is unusable; the process is on its way out
        self.aborted = AbortedRequests(pb, context.name)
        pb.Logger.log_info(f"{context.name}: {self.runtime.describe()}")

    def execute(self, requests):
        if self.broken:
            return [unavailable(pb, self.broken) for _ in requests]
        responses = answer_each(pb, requests, self.respond, failed_internally)
        self.aborted.count(responses)
        return responses

    def respond(self, requests):
        batch = BackboneBatch.gather(pb, requests, self.vocab_size, self.max_tokens)
        if batch.input_ids:
            try:
                gate_hidden, reward_hidden, stats = self.runtime.run(batch.input_ids, batch.gate_positions,
                                                                     batch.reward_positions)
            except Exception as err:
                failure = device_failure(err)
                if failure == BROKEN_DEVICE:  # every later call would fail too: restart the process
                    return self.restart(requests, err)
                if failure == OUT_OF_MEMORY:
                    self.runtime.free_memory()
                raise  # answer_each halves the batch until the culprit is alone (or the pieces fit)
            self.metrics.record(stats)
            batch.answer(pb, gate_hidden, reward_hidden)
        return batch.responses

    def restart(self, requests, err):
        """Answer UNAVAILABLE (retryable) and exit shortly after, once the responses are out: the supervisor sees the
        model process die and restarts the server with a fresh device context (not ready meanwhile)."""
        self.broken = (f"the backbone's GPU context failed ({type(err).__name__}); the model restarts: "
                       "retry shortly")
        pb.Logger.log_error(f"{self.broken}: {err!r}")
        threading.Timer(RESTART_GRACE_S, os._exit, args=(EXIT_BROKEN_DEVICE,)).start()
        return [unavailable(pb, self.broken) for _ in requests]


# Seconds between answering a broken context's requests and the exit: the stub sends the responses meanwhile.
RESTART_GRACE_S = 1.0
EXIT_BROKEN_DEVICE = 3
