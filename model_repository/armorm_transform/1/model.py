"""Triton glue for ArmoRM's reward transform; the math is armorm.model.heads.transform. As the last step it
also passes rewards, gating and num_tokens through (see armorm_client.contract.TRANSFORM)."""

import torch
import triton_python_backend_utils as pb

from armorm.model import heads
from armorm.serving.metrics import COMPLETED, Counter
from armorm.serving.triton_glue import ModelContext, answer_rowwise
from armorm_client.contract import GATING, PASSED_THROUGH, REWARDS, TRANSFORM_WEIGHTS


class TritonPythonModel:
    def initialize(self, args):
        context = ModelContext.from_args(args)
        context.set_torch_threads(1)
        self.device = context.torch_device()
        self.weights = heads.TransformWeights.load(context.version_dir / TRANSFORM_WEIGHTS, self.device)
        self.widths = {tensor.name: tensor.dims[0] for tensor in PASSED_THROUGH}
        self.completed = Counter(pb, COMPLETED, "Requests that left the pipeline's last step, success or error")

    def execute(self, requests):
        responses = answer_rowwise(pb, requests, self.widths, self.compute)
        self.completed.add(len(responses))
        return responses

    @torch.inference_mode()
    def compute(self, inputs):
        rewards = torch.from_numpy(inputs[REWARDS.name]).to(self.device)
        gating = torch.from_numpy(inputs[GATING.name]).to(self.device)
        computed = {name: value.cpu().numpy() for name, value in heads.transform_outputs(rewards, gating,
                                                                                          self.weights).items()}
        return {**computed, **{tensor.name: inputs[tensor.name] for tensor in PASSED_THROUGH}}
