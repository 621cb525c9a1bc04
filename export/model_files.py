"""The files every kind of model writes: the hand-written templates of `model_repository/` and their configs,
the tokenizer and backbone folders the kinds share, and the repository's manifest (contract.MANIFEST)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from google.protobuf import text_format
from safetensors.torch import save_file
from tritonclient.grpc import model_config_pb2

from armorm.model.checkpoint import Checkpoint
from armorm_client import contract
from armorm_export.progress import step

# The hand-written model folders: the source tree's, or those named by ARMORM_TEMPLATES (an installed package has
# no source tree; the image sets it to its copy).
TEMPLATES = Path(os.environ.get("ARMORM_TEMPLATES") or Path(__file__).resolve().parent.parent / "model_repository")


def templates_dir() -> Path:
    """TEMPLATES, checked before any heavy work: a missing copy would otherwise fail after loading the checkpoint."""
    if not (TEMPLATES / contract.ENSEMBLE.name / "config.pbtxt").is_file():
        raise ValueError(f"the model templates are not at {TEMPLATES}: run from the source tree, or set "
                         "ARMORM_TEMPLATES to its model_repository folder")
    return TEMPLATES
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


@dataclass(frozen=True)
class ExportOptions:
    instance_kind: str = "cpu"  # "cpu" or "gpu": where the backbone instance runs
    max_tokens: int | None = None  # default: the checkpoint's max_position_embeddings
    atol: float = 1e-4
    backbone: str = "torch_packed"  # how the backbone runs: a key of BACKBONES
    onnx: bool = True  # export and check the ONNX backbone (every backbone but torch_packed needs it)
    truncate: bool = False  # score the first max_tokens tokens of longer conversations (the card's pipeline)
    # Check the served runtimes against the fp32 reference forward on the CPU. Only the device check's 8B random
    # benchmark turns it off (two fp32 copies of 8B weights on the host, minutes): its GPU parity steps check instead.
    verify: bool = True

    @property
    def serving(self) -> BackboneServing:
        return BACKBONES[self.backbone]


@dataclass(frozen=True)
class BackboneServing:
    """One choice of how the backbone runs, and what the export writes for it."""

    runtime: str  # the Python model's runtime parameter (a key of armorm.runtimes.RUNTIMES)
    triton_backend: str  # "python", or Triton's native "onnxruntime" / "tensorrt" backend (NGC container)
    help: str


# The one export knob (--backbone): how the backbone runs. Python-model runtimes come from armorm.runtimes.
BACKBONES = {
    "torch_packed": BackboneServing("torch_packed", "python", "Python model, padding-free PyTorch (default)"),
    "onnxruntime": BackboneServing("onnxruntime", "python", "Python model running the exported ONNX"),
    "onnxruntime-native": BackboneServing("onnxruntime", "onnxruntime", "Triton's native ONNX Runtime backend"),
    "tensorrt": BackboneServing("onnxruntime", "tensorrt", "Triton's native TensorRT backend; the plan is built "
                                "where tensorrt is installed, else the trtexec command is printed"),
}


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def write_config(path: Path, config: model_config_pb2.ModelConfig, note: str) -> None:
    path.write_text(f"# Written by the export ({note}); the template is model_repository/.\n"
                    + text_format.MessageToString(config))


def copy_templates(output: Path) -> None:
    """Fresh model folders (artifacts of an earlier export, an old plan or other weights, must not survive), each
    config's inputs and outputs written from the contract."""
    for spec in contract.ALL_MODELS:
        shutil.rmtree(output / spec.name, ignore_errors=True)
        shutil.copytree(TEMPLATES / spec.name, output / spec.name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".gitkeep"))
        (output / spec.name / "1").mkdir(exist_ok=True)
        path = output / spec.name / "config.pbtxt"
        config = read_config(path)
        apply_contract(config, spec)
        write_config(path, config, "inputs and outputs from client/contract.py")


def apply_contract(config: model_config_pb2.ModelConfig, spec: contract.ModelSpec) -> None:
    """The model's inputs and outputs as the contract declares them; for the ensemble also the last step's
    output_map (its outputs are the ensemble's, by name: any subset of them can be requested)."""
    del config.input[:]
    del config.output[:]
    for tensor in spec.inputs:
        config.input.add(name=tensor.name, data_type=model_config_pb2.DataType.Value(tensor.data_type),
                         dims=tensor.dims, allow_ragged_batch=tensor.ragged, optional=tensor.optional)
    for tensor in spec.outputs:
        config.output.add(name=tensor.name, data_type=model_config_pb2.DataType.Value(tensor.data_type),
                          dims=tensor.dims)
    if spec in contract.ENSEMBLES:
        last = config.ensemble_scheduling.step[-1]
        last.output_map.clear()
        last.output_map.update({tensor.name: tensor.name for tensor in contract.TRANSFORM.outputs})


def set_parameter(config: model_config_pb2.ModelConfig, key: str, value: str) -> None:
    config.parameters[key].string_value = value


def read_manifest(output: Path) -> dict[str, dict]:
    """contract.MANIFEST's models; for a repository exported before the manifest, ArmoRM's ensembles if present."""
    path = output / contract.MANIFEST
    if path.is_file():
        return json.loads(path.read_text())["models"]
    if (output / contract.ENSEMBLE.name / "config.pbtxt").is_file():
        return {spec.name: {"kind": "armorm"} for spec in contract.ENSEMBLES}
    return {}


def update_manifest(output: Path, served: dict[str, str | dict]) -> None:
    """contract.MANIFEST: every public model of the repository and its kind (an entry: {"kind": ...} and, for a
    mixture, its "members"); models no longer there drop out."""
    path = output / contract.MANIFEST
    models = read_manifest(output)
    models.update({name: entry if isinstance(entry, dict) else {"kind": entry} for name, entry in served.items()})
    models = {name: entry for name, entry in models.items() if (output / name / "config.pbtxt").is_file()}
    path.write_text(json.dumps({"models": dict(sorted(models.items()))}, indent=2) + "\n")


def write_tokenizer_model(checkpoint: Checkpoint, folder: Path, options: ExportOptions, bos_rule: str) -> None:
    """The tokenizer files and the tokenizer step's limits, into an already copied tokenizer template."""
    config = checkpoint.config
    tokenizer_dir = folder / "1" / contract.TOKENIZER_DIR
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    for file_name in TOKENIZER_FILES:
        if (checkpoint.directory / file_name).exists():
            shutil.copy2(checkpoint.directory / file_name, tokenizer_dir / file_name)
    max_tokens = min(options.max_tokens or config.max_position_embeddings, config.max_position_embeddings)
    config_path = folder / "config.pbtxt"
    tokenizer_config = read_config(config_path)
    set_parameter(tokenizer_config, "max_tokens", str(max_tokens))
    set_parameter(tokenizer_config, "truncate", "true" if options.truncate else "false")
    set_parameter(tokenizer_config, "bos_rule", bos_rule)
    write_config(config_path, tokenizer_config, f"max_tokens={max_tokens}, truncate={options.truncate}, "
                                                f"bos_rule={bos_rule}")


# What a backbone computes with: two checkpoints equal in these and in every model.* tensor run the same backbone.
BACKBONE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "num_key_value_heads", "rms_norm_eps", "rope_theta", "rope_scaling", "vocab_size")


def backbone_fingerprint(checkpoint: Checkpoint) -> str:
    """A hash of the backbone: its computing config and every model.* tensor's name, dtype, shape and bytes."""
    with step("hashing the backbone's tensors"):
        digest = hashlib.blake2b(digest_size=32)
        digest.update(json.dumps({k: getattr(checkpoint.config, k) for k in BACKBONE_FIELDS}, sort_keys=True).encode())
        for name in sorted(n for n in checkpoint.state if n.startswith("model.")):
            tensor = checkpoint.state[name].contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy())
        return digest.hexdigest()


def backbones_by_fingerprint(output: Path) -> dict[str, str]:
    """The repository's backbone models, by the fingerprint each was written with."""
    return {path.read_text().strip(): path.parent.parent.name
            for path in sorted(output.glob(f"*/1/{BACKBONE_FINGERPRINT}"))}


def shared_backbone_users(output: Path, backbone: str) -> list[str]:
    """The repository's public models whose ensemble runs on `backbone` without owning it (contract.MANIFEST)."""
    return sorted(name for name, entry in read_manifest(output).items() if entry.get("backbone") == backbone)


def guard_shared_backbone(output: Path, backbone: str, fingerprint: str) -> list[str]:
    """The models that run on `backbone` without owning it; refuses to change its weights under them."""
    users = shared_backbone_users(output, backbone)
    if users and backbones_by_fingerprint(output).get(fingerprint) != backbone:
        raise ValueError(f"{', '.join(users)} run on {backbone}, whose weights this checkpoint would change: export "
                         "into another repository, or re-export those models after this one")
    return users


BACKBONE_FINGERPRINT = "backbone.fingerprint"


def write_backbone_weights(checkpoint: Checkpoint, folder: Path, fingerprint: str | None = None) -> None:
    """config.json, the model.* tensors as stored (for the torch_packed runtime) and the backbone's fingerprint."""
    backbone_dir = folder / "1"
    (backbone_dir / BACKBONE_FINGERPRINT).write_text((fingerprint or backbone_fingerprint(checkpoint)) + "\n")
    (backbone_dir / contract.BACKBONE_CONFIG).write_text(json.dumps(checkpoint.config.to_dict(), indent=2))
    with step("backbone weights (safetensors, as stored) for the torch_packed runtime"):
        backbone_state = {n: t.contiguous() for n, t in checkpoint.state.items() if n.startswith("model.")}
        save_file(backbone_state, str(backbone_dir / contract.BACKBONE_WEIGHTS), metadata={"format": "pt"})
