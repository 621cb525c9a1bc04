"""A repository's config.pbtxt files, parsed with Triton's own schema: what the launcher reads from them."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from armorm_client.contract import TOKENIZER


def read_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


def python_instances(repository: Path) -> set[str]:
    """Names of the Python-backend instances the configs ask for, as Triton names them
    (`<group name or model_groupindex>_<instance index>`, e.g. armorm_backbone_0_0)."""
    names = set()
    for path in Path(repository).glob("*/config.pbtxt"):
        try:
            config = read_config(path)
        except text_format.ParseError:
            continue  # tritonserver refuses it at start-up and says why in its log
        if config.backend != "python":
            continue
        groups = config.instance_group or [mc.ModelInstanceGroup(count=1)]
        for index, group in enumerate(groups):
            prefix = group.name or f"{config.name}_{index}"
            names.update(f"{prefix}_{number}" for number in range(max(group.count, 1)))
    return names


def conversation_bytes_limit(repository: Path) -> int | None:
    """The tokenizer's max_bytes parameter (one conversation's bytes at most), or None where it sets none."""
    try:
        config = read_config(Path(repository) / TOKENIZER.name / "config.pbtxt")
        return int(config.parameters["max_bytes"].string_value) if "max_bytes" in config.parameters else None
    except (OSError, ValueError, text_format.ParseError):
        return None  # tritonserver refuses a broken config at start-up and says why in its log
