"""Triton glue for ArmoRM's reward transform; the math is armorm.heads.transform."""

import torch
import triton_python_backend_utils as pb

from armorm import heads
from armorm.contract import NUM_OBJECTIVES, TRANSFORM_WEIGHTS
from armorm.metrics import CompletedRequests
from armorm.triton_glue import ModelContext, run_rowwise


class TritonPythonModel:
    def initialize(self, args):
        context = ModelContext.from_args(args)
        torch.set_num_threads(context.int_parameter("threads", 1))
        self.device = context.torch_device()
        self.weights = heads.TransformWeights.load(context.version_dir / TRANSFORM_WEIGHTS, self.device)
        self.widths = {"rewards": NUM_OBJECTIVES, "gating": NUM_OBJECTIVES}
        self.completed = CompletedRequests(pb)

    def execute(self, requests):
        responses = run_rowwise(pb, requests, self.widths, self.compute)
        self.completed.count(responses)
        return responses

    @torch.inference_mode()
    def compute(self, inputs):
        rewards = torch.from_numpy(inputs["rewards"]).to(self.device)
        gating = torch.from_numpy(inputs["gating"]).to(self.device)
        score, coefficients = heads.transform(rewards, gating, self.weights)
        return {"score": score.unsqueeze(-1).cpu().numpy(), "coefficients": coefficients.cpu().numpy()}
