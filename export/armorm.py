"""ArmoRM (`LlamaForRewardModelWithGating`) → `armorm`, `armorm_text` and their steps: tokenizer, backbone (the
chosen runtime, ONNX and native backends included), regression, gating and transform heads, each checked against
the reference forward."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tritonclient.grpc import model_config_pb2

from armorm.model.backbone import ArmoRMBackbone
from armorm.model.checkpoint import Checkpoint
from armorm.model.conversation import TEMPLATE_BOS
from armorm.model.heads import HeadWeights
from armorm.model.onnx_backbone import OnnxBackbone, onnx_session
from armorm.model.packed import PackedBackbone
from armorm.reference import ArmoRMReference
from armorm_client import contract
from armorm_client.samples import parity_conversations
from armorm_export import native_backbone, onnx_backbone, tensorrt_plan
from armorm_export.model_files import (
    ExportOptions,
    backbone_fingerprint,
    copy_templates,
    guard_shared_backbone,
    read_config,
    set_parameter,
    write_backbone_weights,
    write_config,
    write_tokenizer_model,
)
from armorm_export.parity import check_runtime
from armorm_export.progress import say, step


def write_armorm(checkpoint: Checkpoint, output: Path, name: str, options: ExportOptions) -> dict[str, dict]:
    config = checkpoint.config
    fingerprint = backbone_fingerprint(checkpoint)
    users = guard_shared_backbone(output, contract.BACKBONE.name, fingerprint)
    copy_templates(output)
    with step("tokenizer"):
        write_tokenizer_model(checkpoint, output / contract.TOKENIZER.name, options, TEMPLATE_BOS)
        max_tokens = min(options.max_tokens or config.max_position_embeddings, config.max_position_embeddings)

    with step("head weights and objective names"):
        head_weights = HeadWeights.from_state_dict(checkpoint.state, config)
        head_weights.regression.save(output / contract.REGRESSION.name / "1" / contract.REGRESSION_WEIGHTS)
        head_weights.gating.save(output / contract.GATING_MODEL.name / "1" / contract.GATING_WEIGHTS)
        head_weights.transform.save(output / contract.TRANSFORM.name / "1" / contract.TRANSFORM_WEIGHTS)
        names = json.dumps(list(contract.OBJECTIVES), indent=2)
        for spec in (contract.REGRESSION, *contract.ENSEMBLES):
            (output / spec.name / "1" / contract.OBJECTIVES_FILE).write_text(names)

    backbone_dir = output / contract.BACKBONE.name / "1"
    write_backbone_weights(checkpoint, output / contract.BACKBONE.name, fingerprint)
    onnx_path = backbone_dir / contract.BACKBONE_ONNX
    if options.onnx:
        with step("backbone → ONNX"):
            onnx_backbone.export_backbone(config, checkpoint.state, onnx_path)
            size = sum(p.stat().st_size for p in backbone_dir.glob("model.onnx*"))
            say(f"wrote {onnx_path} ({size / 2**20:.1f} MiB)")
    elif options.backbone != "torch_packed":
        raise ValueError(f"--backbone {options.backbone} needs the ONNX export (drop --no-onnx)")
    config_path = output / contract.BACKBONE.name / "config.pbtxt"
    backbone_config = read_config(config_path)
    serving = options.serving
    set_parameter(backbone_config, "runtime", serving.runtime)
    if options.instance_kind == "gpu":
        for group in backbone_config.instance_group:
            group.kind = model_config_pb2.ModelInstanceGroup.Kind.KIND_GPU
    if users:  # models that run on this backbone stay on it: their identical requests are computed once
        set_parameter(backbone_config, "dedup_identical", "true")
    write_config(config_path, backbone_config, f"runtime {serving.runtime}, backbone on {options.instance_kind}")

    if options.verify:
        with step("checking the backbone runtimes against the reference forward"):
            errors = verify_backbone(checkpoint, onnx_path if options.onnx else None, options.atol)
            for name, error in errors.items():
                say(f"max |{name} - reference| over hidden rows = {error:.3g} (atol {options.atol:g})")
    else:
        say("not checked against the reference forward here (verify=False)")
    del checkpoint

    if serving.triton_backend == "tensorrt":
        with step("TensorRT plan"):
            tensorrt_plan.build_if_available(onnx_path, backbone_dir / "model.plan", max_tokens)
    if serving.triton_backend != "python":
        path = backbone_dir.parent / "config.pbtxt"
        config = native_backbone.native_backbone_config(read_config(path), serving.triton_backend,
                                                        options.instance_kind == "gpu")
        write_config(path, config, f"backbone on Triton's native {serving.triton_backend} backend")
        (backbone_dir / "model.py").unlink(missing_ok=True)
        say(f"wrote {path} for Triton's native {serving.triton_backend} backend (NGC container; the pip server "
            "has only the Python backend)")
        if serving.triton_backend == "tensorrt" and not (backbone_dir / "model.plan").exists():
            say("no TensorRT here: build the plan on the serving GPU, e.g. trtexec --onnx=model.onnx "
                f"--saveEngine=model.plan --minShapes=input_ids:1x1,gate_position:1,reward_position:1 "
                f"--optShapes=input_ids:8x512,gate_position:8,reward_position:8 "
                f"--maxShapes=input_ids:64x{max_tokens},gate_position:64,reward_position:64")
    return {spec.name: {} for spec in contract.ENSEMBLES}



def verify_backbone(checkpoint: Checkpoint, onnx_path: Path | None, atol: float) -> dict[str, float]:
    """Both runtimes against the Hugging Face reference on the sample conversations (fp32, CPU).

    The conversations include two responses to one prompt, so the packed runtime's prompt sharing
    is exercised too.
    """
    rows = ArmoRMReference(checkpoint).parity_rows(parity_conversations())
    packed = PackedBackbone(ArmoRMBackbone.from_state_dict(checkpoint.config, checkpoint.state, torch.float32))
    errors = {"torch_packed": check_runtime("the packed runtime", packed.run, rows, atol)}
    if onnx_path is not None:
        onnx = OnnxBackbone(onnx_session(onnx_path), checkpoint.config.pad_token_id, max_batch_tokens=1 << 30)
        errors["ONNX Runtime"] = check_runtime("ONNX Runtime", onnx.run, rows, atol)
    return errors

