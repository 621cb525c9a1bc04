"""Triton glue for ArmoRM's gating MLP; the math is armorm.model.heads.gating."""

import torch
import triton_python_backend_utils as pb

from armorm.model import heads
from armorm.serving.codec import distinct_rows
from armorm.serving.metrics import AbortedRequests
from armorm.serving.triton_glue import ModelContext, answer_rowwise
from armorm_client.contract import GATE_HIDDEN, GATING, GATING_WEIGHTS


class TritonPythonModel:
    def initialize(self, args):
        context = ModelContext.from_args(args)
        context.set_torch_threads(1)
        self.device = context.torch_device()
        self.weights = heads.GatingWeights.load(context.version_dir / GATING_WEIGHTS, self.device)
        self.widths = {GATE_HIDDEN.name: int(self.weights.layers[0][0].shape[1])}
        self.aborted = AbortedRequests(pb, context.name)

    def execute(self, requests):
        responses = answer_rowwise(pb, requests, self.widths, self.compute)
        self.aborted.count(responses)
        return responses

    @torch.inference_mode()
    def compute(self, inputs):
        # Responses to one prompt share their gate row bit for bit: compute each distinct row once.
        rows = inputs[GATE_HIDDEN.name]
        first, inverse = distinct_rows(rows)
        gating = heads.gating(torch.from_numpy(rows[first]).to(self.device), self.weights).cpu().numpy()
        return {GATING.name: gating[inverse]}
