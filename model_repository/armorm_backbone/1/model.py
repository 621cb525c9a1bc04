"""Triton glue for the backbone: ragged batches of token ids → the two hidden rows per conversation.

The runtime (config parameter `runtime`) comes from armorm.runtimes; request assembly and splitting are
armorm.serving.triton_glue.BackboneBatch.
"""

import json

import triton_python_backend_utils as pb

from armorm.runtimes import DEFAULT_RUNTIME, RuntimeContext, create_runtime
from armorm.serving.metrics import AbortedRequests, BackboneMetrics
from armorm.serving.triton_glue import BackboneBatch, ModelContext, answer_each, failed_internally
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
        self.aborted = AbortedRequests(pb, context.name)
        pb.Logger.log_info(f"{context.name}: {self.runtime.describe()}")

    def execute(self, requests):
        responses = answer_each(pb, requests, self.respond, failed_internally)
        self.aborted.count(responses)
        return responses

    def respond(self, requests):
        batch = BackboneBatch.gather(pb, requests, self.vocab_size, self.max_tokens)
        if batch.input_ids:
            # A failure (e.g. out of memory) raises: answer_each halves the batch until the culprit is alone.
            gate_hidden, reward_hidden, stats = self.runtime.run(batch.input_ids, batch.gate_positions,
                                                                 batch.reward_positions)
            self.metrics.record(stats)
            batch.answer(pb, gate_hidden, reward_hidden)
        return batch.responses
