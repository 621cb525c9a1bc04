"""Backbone → ONNX: dynamic batch and token axes, only the two hidden rows out."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch

from armorm.model.backbone import ArmoRMBackbone
from armorm.model.config import ArmoRMConfig
from armorm.model.onnx_backbone import ONNX_INPUTS, ONNX_OUTPUTS

# Protobuf's hard limit; above it weights go to an external data file next to model.onnx.
PROTOBUF_LIMIT = 2**31 - 1
OPSET = 17


def example_inputs(config: ArmoRMConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Batch and tokens ≥ 2 so the tracer does not specialise size-1 axes.
    ids = torch.randint(0, config.vocab_size - 1, (2, 12))
    return ids, torch.tensor([5, 3]), torch.tensor([11, 7])


def export_backbone(config: ArmoRMConfig, state: dict[str, torch.Tensor], path: Path) -> Path:
    """Write `path` (model.onnx), with `model.onnx.data` beside it when the weights exceed 2 GB."""
    import onnx

    module = ArmoRMBackbone.from_state_dict(config, state, torch.float32)
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    path.parent.mkdir(parents=True, exist_ok=True)
    # Trace into a scratch folder: over 2 GB the exporter writes one external file per tensor there.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-export-") as scratch_dir:
        scratch = Path(scratch_dir) / "model.onnx"
        # The TorchScript exporter on purpose: torch.export trips on Llama mask code (pytorch#174063).
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                module,
                example_inputs(config),
                str(scratch),
                dynamo=False,
                input_names=list(ONNX_INPUTS),
                output_names=list(ONNX_OUTPUTS),
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "tokens"},
                    "gate_position": {0: "batch"},
                    "reward_position": {0: "batch"},
                    "gate_hidden": {0: "batch"},
                    "reward_hidden": {0: "batch"},
                },
                opset_version=OPSET,
                do_constant_folding=True,
            )
        del module
        model = onnx.load(str(scratch), load_external_data=True)
    external = weight_bytes >= PROTOBUF_LIMIT - (64 << 20)
    data_name = path.name + ".data"
    (path.parent / data_name).unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    onnx.checker.check_model(str(path))
    return path
