"""Triton glue for a Bradley–Terry head; the math is armorm.model.bradley_terry.score."""

import torch
import triton_python_backend_utils as pb

from armorm.model import bradley_terry
from armorm.serving.metrics import AbortedRequests
from armorm.serving.triton_glue import ModelContext, answer_rowwise
from armorm_client.contract import REWARD_HIDDEN, SCORE, SCORE_WEIGHTS


class TritonPythonModel:
    def initialize(self, args):
        context = ModelContext.from_args(args)
        context.set_torch_threads(1)
        self.device = context.torch_device()
        self.weights = bradley_terry.ScoreWeights.load(context.version_dir / SCORE_WEIGHTS, self.device)
        self.widths = {REWARD_HIDDEN.name: int(self.weights.weight.shape[1])}
        self.aborted = AbortedRequests(pb, context.name)

    def execute(self, requests):
        responses = answer_rowwise(pb, requests, self.widths, self.compute)
        self.aborted.count(responses)
        return responses

    @torch.inference_mode()
    def compute(self, inputs):
        hidden = torch.from_numpy(inputs[REWARD_HIDDEN.name]).to(self.device)
        return {SCORE.name: bradley_terry.score(hidden, self.weights).cpu().numpy()}
