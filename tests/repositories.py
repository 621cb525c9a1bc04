"""Derived repositories for tests that need other limits than the exported defaults."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from armorm_client import contract
from armorm_export.repository import read_config, write_config


def derive(source: Path, target: Path, edit: Callable[[str, object], None]) -> Path:
    """Copy `source` to `target`, then call edit(model_name, ModelConfig) on every model's config."""
    shutil.copytree(source, target)
    for spec in contract.ALL_MODELS:
        path = target / spec.name / "config.pbtxt"
        config = read_config(path)
        edit(spec.name, config)
        write_config(path, config, "test")
    return target
