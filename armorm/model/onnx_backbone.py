"""Running the exported ONNX backbone with ONNX Runtime on a batch of conversations."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from armorm.model.batching import BackboneStats, pad_right, token_budget_groups
from armorm_client.contract import GATE_HIDDEN, GATE_POSITION, INPUT_IDS, REWARD_HIDDEN, REWARD_POSITION

# The exported graph's I/O carries the backbone's contract names.
ONNX_INPUTS = (INPUT_IDS.name, GATE_POSITION.name, REWARD_POSITION.name)
ONNX_OUTPUTS = (GATE_HIDDEN.name, REWARD_HIDDEN.name)


class MissingProviderError(RuntimeError):
    """A GPU-placed ONNX Runtime backbone in a build without the CUDA provider: it would run on the host."""


def onnx_session(path: Path, device: str = "cpu", threads: int = 0):
    """An ONNX Runtime session on `device` ("cpu", or "cuda:N": that GPU, which needs the CUDA provider)."""
    import onnxruntime as ort

    if device.startswith("cuda") and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise MissingProviderError(
            f"the backbone is placed on {device} but this onnxruntime {ort.__version__} has no CUDA provider "
            f"(it has {', '.join(ort.get_available_providers())}): install onnxruntime-gpu matching the CUDA version, "
            "or use the torch_packed runtime (the default), or place the backbone on the CPU (KIND_CPU)")

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        options.intra_op_num_threads = threads
    providers: list = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


class OnnxBackbone:
    """Pads each token-budget group to its longest conversation and runs one session call per group."""

    def __init__(self, session, pad_token_id: int, max_batch_tokens: int) -> None:
        self.session = session
        self.pad_token_id = pad_token_id
        self.max_batch_tokens = max_batch_tokens
        self.last_stats = BackboneStats(0, 0, 0, 0)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run(
        self, input_ids: Sequence[np.ndarray], gate_positions: np.ndarray, reward_positions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """input_ids: one 1-D int64 array per conversation → (gate_hidden, reward_hidden) [n, hidden] fp32."""
        count = len(input_ids)
        gate_out: list[np.ndarray | None] = [None] * count
        reward_out: list[np.ndarray | None] = [None] * count
        groups = token_budget_groups([row.shape[0] for row in input_ids], self.max_batch_tokens)
        tokens = int(sum(row.shape[0] for row in input_ids))
        computed = 0
        for group in groups:
            padded = pad_right([input_ids[i] for i in group], self.pad_token_id)
            computed += padded.size
            feeds = dict(zip(ONNX_INPUTS, (padded, np.asarray(gate_positions[group], dtype=np.int64),
                                           np.asarray(reward_positions[group], dtype=np.int64))))
            gate, reward = self.session.run(list(ONNX_OUTPUTS), feeds)
            for row, index in enumerate(group):
                gate_out[index], reward_out[index] = gate[row], reward[row]
        self.last_stats = BackboneStats(conversations=count, tokens=tokens, computed_tokens=computed,
                                        forwards=len(groups), padding_tokens=computed - tokens)
        return np.stack(gate_out).astype(np.float32), np.stack(reward_out).astype(np.float32)
