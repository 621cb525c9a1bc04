"""Where the backbone runs, decided when the server starts on its node, not when the repository was exported.

The export writes the backbone's config for both placements (`armorm_backbone/configs/{cpu,gpu}.pbtxt`, next to
the export host's own choice in `config.pbtxt`); `armorm-serve` passes `--model-config-name` for the one this
node can run. Models without a `configs/` folder keep their `config.pbtxt`.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from armorm_client.contract import BACKBONE

DEVICES = ("auto", "cpu", "gpu", "exported")
_COUNT_GPUS = "import torch; print(torch.cuda.device_count())"


class PlacementError(RuntimeError):
    """The requested placement cannot run here; the message says what to change."""


@dataclass(frozen=True)
class Placement:
    config_name: str | None  # for --model-config-name; None: each model's config.pbtxt
    reason: str

    def triton_flags(self) -> list[str]:
        return [f"--model-config-name={self.config_name}"] if self.config_name else []


def placement_config(repository: Path, name: str) -> Path:
    return repository / BACKBONE.name / "configs" / f"{name}.pbtxt"


def visible_gpus(timeout: float = 120.0) -> int:
    """CUDA devices this process may use (CUDA_VISIBLE_DEVICES and the container's devices applied).

    Asked of torch in a child process, so that this long-lived supervisor holds no CUDA state.
    """
    try:
        done = subprocess.run([sys.executable, "-c", _COUNT_GPUS], capture_output=True, text=True, timeout=timeout)
        return int(done.stdout.strip()) if done.returncode == 0 else 0
    except (subprocess.TimeoutExpired, ValueError):
        return 0


def choose_placement(repository: Path, requested: str, gpus: int) -> Placement:
    """The backbone config to load for `requested` ("auto", "cpu", "gpu" or "exported") on a node with `gpus`."""
    if requested not in DEVICES:
        raise PlacementError(f"--backbone-device {requested!r}: choose one of {', '.join(DEVICES)}")
    if requested == "exported":
        return Placement(None, "as exported (config.pbtxt)")
    device = requested if requested != "auto" else ("gpu" if gpus else "cpu")
    if requested == "auto" and device == "cpu" and not placement_config(repository, device).exists():
        return Placement(None, "as exported (config.pbtxt): no GPU here and no configs/ in the repository")
    if device == "gpu" and gpus == 0:
        raise PlacementError("--backbone-device gpu, but no CUDA device is visible here: give the container a GPU "
                             "(Kubernetes: an nvidia.com/gpu limit; Docker: --gpus) or pass --backbone-device cpu")
    if not placement_config(repository, device).exists():
        raise PlacementError(f"{placement_config(repository, device)} is missing: the repository predates "
                             "start-time placement; export it again, or pass --backbone-device exported")
    why = f"{gpus} GPU(s) visible" if requested == "auto" else "--backbone-device"
    return Placement(device, f"backbone on {device.upper()} ({why})")
