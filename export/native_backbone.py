"""Backbone config for Triton's native ONNX Runtime or TensorRT backends (the NGC container has both;
the pip server does not). The I/O names and types are the contract's; what changes:

- no ragged batching: native backends batch only requests of equal length (the Python runtimes pack or
  pad mixed lengths instead, which is why they stay the default);
- the positions arrive as [batch, 1] and are reshaped to the ONNX graph's [batch].
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc

from armorm_client import contract

PLATFORMS = {"onnxruntime": ("onnxruntime_onnx", contract.BACKBONE_ONNX), "tensorrt": ("tensorrt_plan", "model.plan")}


def native_backbone_config(python_config: mc.ModelConfig, backend: str, gpu: bool) -> mc.ModelConfig:
    """The Python-backend backbone config turned into a native one (batching and queue policy kept)."""
    platform, filename = PLATFORMS[backend]
    config = mc.ModelConfig()
    config.name = contract.BACKBONE.name
    config.platform = platform
    config.default_model_filename = filename
    config.max_batch_size = python_config.max_batch_size
    for spec in contract.BACKBONE.inputs:
        tensor = config.input.add(name=spec.name, data_type=mc.DataType.Value(spec.data_type), dims=list(spec.dims))
        if spec.name != contract.INPUT_IDS.name:
            tensor.reshape.SetInParent()  # [1] per request → the ONNX graph's [batch]
    for spec in contract.BACKBONE.outputs:
        config.output.add(name=spec.name, data_type=mc.DataType.Value(spec.data_type), dims=list(spec.dims))
    config.dynamic_batching.CopyFrom(python_config.dynamic_batching)
    kind = mc.ModelInstanceGroup.Kind.KIND_GPU if gpu else mc.ModelInstanceGroup.Kind.KIND_CPU
    config.instance_group.add(count=1, kind=kind)
    return config

