"""The torch_packed runtime: armorm.model.packed (padding-free, shared prompts once) on the stored bf16/fp32 weights."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from safetensors import safe_open

from armorm.model.backbone import ArmoRMBackbone, default_dtype
from armorm.model.batching import BackboneStats
from armorm.model.config import ArmoRMConfig
from armorm.model.packed import PackedBackbone
from armorm.runtimes import RuntimeContext
from armorm_client.contract import BACKBONE_WEIGHTS

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def serving_dtype(name: str, device: str) -> torch.dtype:
    """The `dtype` parameter: auto (bf16 on a GPU, fp32 on CPU) or one of DTYPES; anything else is refused."""
    if name == "auto":
        return default_dtype(device)
    if name not in DTYPES:
        raise ValueError(f"parameter dtype must be auto or one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


class TorchPackedRuntime:
    name = "torch_packed"

    def __init__(self, context: RuntimeContext) -> None:
        threads = context.parameters.integer("threads", 0)  # 0: torch's own choice
        if threads > 0:
            torch.set_num_threads(threads)
        self.dtype = serving_dtype(context.parameters.get("dtype", "auto"), context.device)
        # Straight onto the device, one tensor at a time, each in the serving dtype as it arrives: neither the
        # host (the chart's memory limit) nor the device ever holds the weights twice.
        with safe_open(str(context.version_dir / BACKBONE_WEIGHTS), framework="pt", device=str(context.device)) as f:
            state = {name: f.get_tensor(name).to(self.dtype) for name in f.keys()}
        module = ArmoRMBackbone.from_state_dict(ArmoRMConfig.from_dict(dict(context.config)), state, self.dtype)
        self.packed = PackedBackbone(module.to(context.device), context.max_batch_tokens,
                                     attention=context.parameters.get("attention", "auto"))
        self.share_prompts = context.parameters.boolean("share_prompts", True)
        self.device = context.device

    def run(self, input_ids: Sequence[np.ndarray], gate_positions: np.ndarray,
            reward_positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, BackboneStats]:
        gate, reward = self.packed.run(input_ids, gate_positions, reward_positions, share_prompts=self.share_prompts)
        both = torch.stack((gate, reward)).cpu().numpy()  # one copy to the host
        return both[0], both[1], self.packed.last_stats

    def free_memory(self) -> None:
        if str(self.device).startswith("cuda"):
            torch.cuda.empty_cache()

    def describe(self) -> str:
        return (f"torch_packed on {self.device}, {self.dtype}, attention {self.packed.attention_name}, "
                f"{torch.get_num_threads()} threads")


def create(context: RuntimeContext) -> TorchPackedRuntime:
    return TorchPackedRuntime(context)
