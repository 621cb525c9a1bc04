"""The kinds of reward model the export reads, one line each in KINDS, and the one place that picks a kind
(kind_of, from the checkpoint's `architectures`). A kind's module writes its models; adding a kind touches that
module, this registry, and its templates."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from armorm.model import bradley_terry, pairwise
from armorm.model.checkpoint import Checkpoint
from armorm.model.config import ArmoRMConfig
from armorm_client import contract
from armorm_export import bradley_terry as bradley_terry_export
from armorm_export import pairwise as pairwise_export
from armorm_export.armorm import write_armorm
from armorm_export.model_files import ExportOptions, read_manifest


@dataclass(frozen=True)
class Kind:
    """A kind of reward model: the checkpoint architectures it reads, and how its models are written."""

    name: str
    architectures: tuple[str, ...]
    # → the public models written, each with what its manifest entry adds to its kind (a shared backbone)
    write: Callable[[Checkpoint, Path, str, ExportOptions], dict[str, dict]]
    fixed_name: str | None = None  # ArmoRM's contract names it

    def check_name(self, name: str | None, output: Path) -> str:
        if self.fixed_name is not None:
            if name not in (None, self.fixed_name):
                raise ValueError(f"{self.name} is served as {self.fixed_name!r} (its contract); drop --name")
            return self.fixed_name
        if name is None:
            raise ValueError(f"name this {self.name} model with --name (its ensemble's name, e.g. fsfairx)")
        return check_model_name(name, output, self.name)


def check_model_name(name: str, output: Path, kind: str) -> str:
    """A name for a new public model (or the same kind's re-export): one that cannot be another model's folder."""
    if not MODEL_NAME.fullmatch(name) or name.startswith(RESERVED_PREFIX) or name.endswith(RESERVED_SUFFIXES):
        raise ValueError(f"name {name!r}: use lower-case letters, digits and '_', not starting with "
                         f"{RESERVED_PREFIX!r} (ArmoRM's) nor ending in {', '.join(RESERVED_SUFFIXES)} (the steps')")
    entry = read_manifest(output).get(name)
    if (output / name).exists() and (entry is None or entry.get("kind") != kind):
        held = f"a {entry['kind']} model" if entry else "a folder"
        raise ValueError(f"{output / name} is already {held}: pick another name")
    return name


MODEL_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
RESERVED_PREFIX = "armorm"
RESERVED_SUFFIXES = ("_tokenizer", "_backbone", "_score", "_text")  # the folders a model's steps take


def kind_of(config: ArmoRMConfig) -> Kind:
    architectures = config.extra.get("architectures") or []
    if not architectures:  # configs written before architectures were read (the device check's random 8B)
        return KINDS[0]
    for kind in KINDS:
        if any(a in kind.architectures for a in architectures):
            if kind.name == "bradley_terry" and config.extra.get("num_labels", len(config.extra.get("id2label") or
                                                                                   [0])) != 1:
                raise ValueError("a sequence classifier with more than one label is not a Bradley–Terry reward model")
            return kind
    raise ValueError(f"architectures {architectures}: this export reads "
                     + "; ".join(f"{kind.name} ({', '.join(kind.architectures)})" for kind in KINDS))



# One line per kind; the first is what a config without `architectures` is.
KINDS: tuple[Kind, ...] = (
    Kind("armorm", ("LlamaForRewardModelWithGating",), write_armorm, fixed_name=contract.ENSEMBLE.name),
    Kind("bradley_terry", (bradley_terry.ARCHITECTURE,), bradley_terry_export.write_models),
    Kind("pairwise", (pairwise.ARCHITECTURE,), pairwise_export.write_models),
)
