"""Optional TensorRT engine for the backbone, built only where `tensorrt` is importable."""

from __future__ import annotations

from pathlib import Path

from armorm_export.progress import say


def build_if_available(onnx_path: Path, plan_path: Path, max_tokens: int, max_batch: int = 64,
                       opt_tokens: int = 512, opt_batch: int = 8) -> Path | None:
    try:
        import tensorrt as trt
    except ImportError:
        say("TensorRT is not installed here (import tensorrt failed): skipping the plan; "
            "the ONNX backbone is complete on its own. Install tensorrt on the serving GPU to build one.")
        return None
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    parser = trt.OnnxParser(network, logger)
    # Parse from the path so that external weights (model.onnx.data) resolve.
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape("input_ids", (1, 1), (opt_batch, opt_tokens), (max_batch, max_tokens))
    for name in ("gate_position", "reward_position"):
        profile.set_shape(name, (1,), (opt_batch,), (max_batch,))
    config.add_optimization_profile(profile)
    say(f"building a TensorRT {trt.__version__} engine (batch 1..{max_batch}, tokens 1..{max_tokens}); "
        "this takes minutes for the 8B backbone")
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("TensorRT failed to build the engine (see the log above)")
    plan_path.write_bytes(bytes(engine))
    say(f"wrote {plan_path}; note the plan is tied to this TensorRT version and GPU")
    return plan_path
