"""Write a deployable model repository: the hand-written configs and model.py files from
`model_repository/`, plus the artifacts each model loads (tokenizer files, ONNX backbone, head weights,
objective names)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from armorm import contract
from armorm.checkpoint import Checkpoint
from armorm.conversation import ConversationTokenizer
from armorm.heads import HeadWeights
from armorm.reference import ArmoRMReference
from armorm.samples import parity_conversations
from armorm_export import onnx_backbone, tensorrt_plan
from armorm_export.progress import say, step

TEMPLATES = Path(__file__).resolve().parent.parent / "model_repository"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


@dataclass(frozen=True)
class ExportOptions:
    instance_kind: str = "cpu"  # "cpu" or "gpu": where the backbone instance runs
    max_tokens: int | None = None  # default: the checkpoint's max_position_embeddings
    atol: float = 1e-4
    tensorrt: bool = False


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def write_config(path: Path, config: model_config_pb2.ModelConfig, note: str) -> None:
    path.write_text(f"# Written by the export ({note}); the template is model_repository/.\n"
                    + text_format.MessageToString(config))


def copy_templates(output: Path) -> None:
    for spec in contract.ALL_MODELS:
        shutil.copytree(TEMPLATES / spec.name, output / spec.name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".gitkeep"))
        (output / spec.name / "1").mkdir(exist_ok=True)


def set_parameter(config: model_config_pb2.ModelConfig, key: str, value: str) -> None:
    config.parameters[key].string_value = value


def export_repository(checkpoint_name: str | Path, output: Path, options: ExportOptions = ExportOptions()) -> Path:
    output = Path(output)
    with step(f"loading checkpoint {checkpoint_name}"):
        checkpoint = Checkpoint.load(checkpoint_name, progress=True)
    config = checkpoint.config
    say(f"hidden {config.hidden_size}, {config.num_hidden_layers} layers, vocab {config.vocab_size}")
    output.mkdir(parents=True, exist_ok=True)
    copy_templates(output)

    with step("tokenizer"):
        tokenizer_dir = output / contract.TOKENIZER.name / "1" / contract.TOKENIZER_DIR
        tokenizer_dir.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            if (checkpoint.directory / name).exists():
                shutil.copy2(checkpoint.directory / name, tokenizer_dir / name)
        max_tokens = min(options.max_tokens or config.max_position_embeddings, config.max_position_embeddings)
        config_path = output / contract.TOKENIZER.name / "config.pbtxt"
        tokenizer_config = read_config(config_path)
        set_parameter(tokenizer_config, "max_tokens", str(max_tokens))
        write_config(config_path, tokenizer_config, f"max_tokens={max_tokens}")

    with step("head weights and objective names"):
        head_weights = HeadWeights.from_state_dict(checkpoint.state, config)
        head_weights.regression.save(output / contract.REGRESSION.name / "1" / contract.REGRESSION_WEIGHTS)
        head_weights.gating.save(output / contract.GATING_MODEL.name / "1" / contract.GATING_WEIGHTS)
        head_weights.transform.save(output / contract.TRANSFORM.name / "1" / contract.TRANSFORM_WEIGHTS)
        names = json.dumps(list(contract.OBJECTIVES), indent=2)
        for spec in (contract.REGRESSION, contract.ENSEMBLE):
            (output / spec.name / "1" / contract.OBJECTIVES_FILE).write_text(names)

    backbone_dir = output / contract.BACKBONE.name / "1"
    with step("backbone → ONNX"):
        onnx_path = onnx_backbone.export_backbone(config, checkpoint.state, backbone_dir / contract.BACKBONE_ONNX)
        (backbone_dir / contract.BACKBONE_CONFIG).write_text(json.dumps(config.to_dict(), indent=2))
        size = sum(p.stat().st_size for p in backbone_dir.glob("model.onnx*"))
        say(f"wrote {onnx_path} ({size / 2**20:.1f} MiB)")
    if options.instance_kind == "gpu":
        config_path = output / contract.BACKBONE.name / "config.pbtxt"
        backbone_config = read_config(config_path)
        for group in backbone_config.instance_group:
            group.kind = model_config_pb2.ModelInstanceGroup.Kind.KIND_GPU
        write_config(config_path, backbone_config, "backbone on GPU")

    with step("checking ONNX Runtime against the reference forward"):
        error = verify_backbone(checkpoint, onnx_path, options.atol)
        say(f"max |ONNX Runtime - reference| over hidden rows = {error:.3g} (atol {options.atol:g})")
    del checkpoint

    if options.tensorrt:
        with step("TensorRT plan"):
            tensorrt_plan.build_if_available(onnx_path, backbone_dir / "model.plan", max_tokens)
    say(f"model repository ready: {output}")
    return output


def verify_backbone(checkpoint: Checkpoint, onnx_path: Path, atol: float) -> float:
    reference = ArmoRMReference(checkpoint)
    tokenizer: ConversationTokenizer = reference.tokenizer
    expected = []
    for messages in parity_conversations():
        tokens = tokenizer.tokenize(messages)
        gate, reward, _ = reference.hidden_rows(messages)
        expected.append((tokens.input_ids, tokens.gate_position, tokens.reward_position,
                         gate.float().cpu().numpy(), reward.float().cpu().numpy()))
    del reference
    return onnx_backbone.check_parity(onnx_path, expected, checkpoint.config.pad_token_id, atol)


