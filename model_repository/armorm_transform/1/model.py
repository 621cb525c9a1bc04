"""Triton glue for ArmoRM's reward transform; the math is armorm.heads.transform."""

import torch
import triton_python_backend_utils as pb

from armorm import heads
from armorm.contract import NUM_OBJECTIVES, TRANSFORM_WEIGHTS
from armorm.metrics import COMPLETED, Counter
from armorm.triton_glue import ModelContext, run_rowwise


class TritonPythonModel:
    def initialize(self, args):
        context = ModelContext.from_args(args)
        context.set_torch_threads(1)
        self.device = context.torch_device()
        self.weights = heads.TransformWeights.load(context.version_dir / TRANSFORM_WEIGHTS, self.device)
        self.widths = {"rewards": NUM_OBJECTIVES, "gating": NUM_OBJECTIVES}
        self.completed = Counter(pb, COMPLETED, "Requests that left the pipeline's last step, success or error")

    def execute(self, requests):
        responses = run_rowwise(pb, requests, self.widths, self.compute)
        self.completed.add(len(responses))
        return responses

    @torch.inference_mode()
    def compute(self, inputs):
        rewards = torch.from_numpy(inputs["rewards"]).to(self.device)
        gating = torch.from_numpy(inputs["gating"]).to(self.device)
        score, coefficients = heads.transform(rewards, gating, self.weights)
        return {"score": score.unsqueeze(-1).cpu().numpy(), "coefficients": coefficients.cpu().numpy()}
