"""Triton glue for the backbone: ragged batches of token ids → the two hidden rows per conversation.

The runtime (config parameter `runtime`) comes from armorm.runtimes; the batch work, metrics and device failures are
armorm.serving.backbone_step.
"""

import json

import triton_python_backend_utils as pb

from armorm.runtimes import DEFAULT_RUNTIME, RuntimeContext, create_runtime
from armorm.serving.backbone_step import BackboneStep
from armorm.serving.triton_glue import ModelContext
from armorm_client.contract import BACKBONE_CONFIG


class TritonPythonModel:
    def initialize(self, args):
        context = ModelContext.from_args(args)
        config = json.loads((context.version_dir / BACKBONE_CONFIG).read_text())
        runtime_context = RuntimeContext(context.version_dir, config, context.torch_device(), context.params)
        runtime = create_runtime(context.parameter("runtime", DEFAULT_RUNTIME), runtime_context)
        self.step = BackboneStep(pb, context.name, runtime, int(config["vocab_size"]),
                                 int(config["max_position_embeddings"]),
                                 context.bool_parameter("dedup_identical", False))
        pb.Logger.log_info(f"{context.name}: {runtime.describe()}")

    def execute(self, requests):
        return self.step.execute(requests)
