"""Write a deployable model repository: one checkpoint's models (its kind picked by armorm_export.kinds) beside the
others already there, built from the hand-written templates of `model_repository/` (armorm_export.model_files)."""

from __future__ import annotations

from pathlib import Path

from armorm.model.checkpoint import Checkpoint
from armorm_export.kinds import kind_of
from armorm_export.model_files import (
    BACKBONES,
    TEMPLATES,
    ExportOptions,
    read_config,
    set_parameter,
    templates_dir,
    update_manifest,
    write_config,
)
from armorm_export.progress import say, step

# What callers of the export import from here.
__all__ = ["BACKBONES", "ExportOptions", "export_repository", "read_config", "set_parameter", "write_config"]


def export_repository(checkpoint_name: str | Path, output: Path, options: ExportOptions | None = None,
                      name: str | None = None) -> Path:
    """Write the models of one checkpoint into `output` (under `name`: ArmoRM is always `armorm`), keeping the other
    reward models already there, and list them in the repository's manifest."""
    output, options = Path(output), options or ExportOptions()
    templates_dir()
    if output.resolve() == TEMPLATES.resolve():
        raise ValueError(f"{output} holds the templates; export into another folder (e.g. build/repository)")
    with step(f"loading checkpoint {checkpoint_name}"):
        loaded = [Checkpoint.load(checkpoint_name, progress=True)]
    config = loaded[0].config
    kind = kind_of(config)
    served_name = kind.check_name(name, output)
    say(f"{kind.name}: hidden {config.hidden_size}, {config.num_hidden_layers} layers, vocab {config.vocab_size}")
    output.mkdir(parents=True, exist_ok=True)
    # The writer holds the only reference to the weights, so it can free them before its last (plan) step.
    served = kind.write(loaded.pop(), output, served_name, options)
    update_manifest(output, {model: {"kind": kind.name, **entry} for model, entry in served.items()})
    say(f"model repository ready: {output} ({', '.join(served)})")
    return output
