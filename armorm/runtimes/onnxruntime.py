"""The onnxruntime runtime: the exported ONNX backbone, right-padded groups under the token budget."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from armorm.model.batching import BackboneStats
from armorm.model.onnx_backbone import OnnxBackbone, onnx_session
from armorm.runtimes import RuntimeContext
from armorm_client.contract import BACKBONE_ONNX


class OnnxRuntimeBackbone:
    name = "onnxruntime"

    def __init__(self, context: RuntimeContext) -> None:
        session = onnx_session(context.version_dir / BACKBONE_ONNX, device=context.device,
                               threads=context.parameters.integer("threads", 0))
        self.backbone = OnnxBackbone(session, int(context.config["pad_token_id"]), context.max_batch_tokens)

    def run(self, input_ids: Sequence[np.ndarray], gate_positions: np.ndarray,
            reward_positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, BackboneStats]:
        gate, reward = self.backbone.run(input_ids, gate_positions, reward_positions)
        return gate, reward, self.backbone.last_stats

    def free_memory(self) -> None:
        """ONNX Runtime's arena keeps its memory; nothing to give back from here."""

    def describe(self) -> str:
        return f"onnxruntime with {self.backbone.providers}"


def create(context: RuntimeContext) -> OnnxRuntimeBackbone:
    return OnnxRuntimeBackbone(context)
