"""Load an ArmoRM checkpoint: a local directory (config.json, safetensors shards, tokenizer files) or a hub id."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tqdm import tqdm

from armorm.model.config import ArmoRMConfig

SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A local directory as it is; anything else is a hub id fetched (or found in the local cache)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).startswith((".", "/")):
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    from huggingface_hub import snapshot_download

    print(f"fetching {name_or_path} from the Hugging Face hub (or its local cache)", file=sys.stderr, flush=True)
    return Path(snapshot_download(str(name_or_path), allow_patterns=["*.json", "*.safetensors", "*.model"]))


def weight_files(directory: Path) -> list[Path]:
    index = directory / SHARD_INDEX
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / shard for shard in shards]
    if (directory / SINGLE_FILE).exists():
        return [directory / SINGLE_FILE]
    raise FileNotFoundError(f"{directory} holds neither {SHARD_INDEX} nor {SINGLE_FILE}")


def load_state_dict(directory: Path, progress: bool = False) -> dict[str, torch.Tensor]:
    """All parameters, in their stored dtypes, on the CPU; with `progress`, a bar of bytes read on stderr."""
    state: dict[str, torch.Tensor] = {}
    files = weight_files(directory)
    with tqdm(total=sum(path.stat().st_size for path in files), desc="loading weights", unit="B", unit_scale=True,
              unit_divisor=1024, file=sys.stderr, disable=not progress) as bar:
        for path in files:
            read = 0
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    state[name] = handle.get_tensor(name)
                    bar.update(size := state[name].numel() * state[name].element_size())
                    read += size
            bar.update(path.stat().st_size - read)  # the file's header
    return state


def load_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


@dataclass
class Checkpoint:
    directory: Path
    config: ArmoRMConfig
    state: dict[str, torch.Tensor]

    @classmethod
    def load(cls, name_or_path: str | Path, progress: bool = False) -> Checkpoint:
        directory = resolve_checkpoint(name_or_path)
        config = ArmoRMConfig.from_file(directory / "config.json")
        return cls(directory, config, load_state_dict(directory, progress=progress))
