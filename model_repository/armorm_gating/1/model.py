"""Triton glue for ArmoRM's gating MLP; the math is armorm.heads.gating."""

import torch
import triton_python_backend_utils as pb

from armorm import heads
from armorm.contract import GATING_WEIGHTS
from armorm.triton_glue import ModelContext, run_rowwise


class TritonPythonModel:
    def initialize(self, args):
        context = ModelContext.from_args(args)
        self.device = context.torch_device()
        self.weights = heads.GatingWeights.load(context.version_dir / GATING_WEIGHTS, self.device)
        self.widths = {"gate_hidden": int(self.weights.layers[0][0].shape[1])}

    def execute(self, requests):
        return run_rowwise(pb, requests, self.widths, self.compute)

    @torch.inference_mode()
    def compute(self, inputs):
        hidden = torch.from_numpy(inputs["gate_hidden"]).to(self.device)
        return {"gating": heads.gating(hidden, self.weights).cpu().numpy()}
