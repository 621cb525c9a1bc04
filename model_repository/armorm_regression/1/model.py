"""Triton glue for ArmoRM's regression head; the math is armorm.model.heads.regression. A Bradley–Terry model's
score head is the same model with one row (its output, named in its config, is `score`)."""

import torch
import triton_python_backend_utils as pb

from armorm.model import heads
from armorm.serving.metrics import AbortedRequests
from armorm.serving.triton_glue import ModelContext, answer_rowwise
from armorm_client.contract import REGRESSION_WEIGHTS, REWARD_HIDDEN


class TritonPythonModel:
    def initialize(self, args):
        context = ModelContext.from_args(args)
        context.set_torch_threads(1)
        self.device = context.torch_device()
        self.weights = heads.RegressionWeights.load(context.version_dir / REGRESSION_WEIGHTS, self.device)
        self.widths = {REWARD_HIDDEN.name: int(self.weights.weight.shape[1])}
        self.aborted = AbortedRequests(pb, context.name)
        self.output = context.outputs[0]  # rewards (ArmoRM) or score (a Bradley–Terry model)

    def execute(self, requests):
        responses = answer_rowwise(pb, requests, self.widths, self.compute)
        self.aborted.count(responses)
        return responses

    @torch.inference_mode()
    def compute(self, inputs):
        hidden = torch.from_numpy(inputs[REWARD_HIDDEN.name]).to(self.device)
        return {self.output: heads.regression(hidden, self.weights).cpu().numpy()}
