"""Where the backbone runs, decided when the server starts on its node, not when the repository was exported.

The repository (often a read-only volume) is left as it is. When its backbone config places the backbone
elsewhere than this node needs, tritonserver is pointed at a private view of it: every model folder linked
as it is, and the backbone's folder holding its files linked plus a copy of its config.pbtxt with the instance
kind changed. So edits to config.pbtxt (queue sizes, batching, parameters) take effect at each start of
armorm-serve, placement or not.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from armorm.launcher.model_config import read_config
from armorm_client.contract import BACKBONE

DEVICES = ("auto", "cpu", "gpu", "exported")
KINDS = {"cpu": mc.ModelInstanceGroup.Kind.KIND_CPU, "gpu": mc.ModelInstanceGroup.Kind.KIND_GPU}
_COUNT_GPUS = "import torch; print(torch.cuda.device_count())"


class PlacementError(RuntimeError):
    """The requested placement cannot run here; the message says what to change."""


@dataclass(frozen=True)
class Placement:
    device: str | None  # "cpu" or "gpu"; None: as exported
    reason: str


def visible_gpus(timeout: float = 120.0) -> int:
    """CUDA devices this process may use (CUDA_VISIBLE_DEVICES and the container's devices applied).

    Asked of torch in a child process, so that this long-lived supervisor holds no CUDA state.
    """
    try:
        done = subprocess.run([sys.executable, "-c", _COUNT_GPUS], capture_output=True, text=True, timeout=timeout)
        return int(done.stdout.strip()) if done.returncode == 0 else 0
    except (subprocess.TimeoutExpired, ValueError):
        return 0


def choose_placement(requested: str, gpus: int) -> Placement:
    """The backbone's device for `requested` ("auto", "cpu", "gpu" or "exported") on a node with `gpus`."""
    if requested not in DEVICES:
        raise PlacementError(f"--backbone-device {requested!r}: choose one of {', '.join(DEVICES)}")
    if requested == "exported":
        return Placement(None, "backbone placed as exported (config.pbtxt)")
    if requested == "gpu" and gpus == 0:
        raise PlacementError("--backbone-device gpu, but no CUDA device is visible here: give the container a GPU "
                             "(Kubernetes: an nvidia.com/gpu limit; Docker: --gpus) or pass --backbone-device cpu")
    device = requested if requested != "auto" else ("gpu" if gpus else "cpu")
    why = f"{gpus} GPU(s) visible" if requested == "auto" else "--backbone-device"
    return Placement(device, f"backbone on {device.upper()} ({why})")


def placed_config(config: mc.ModelConfig, device: str) -> mc.ModelConfig | None:
    """`config` with every instance group of kind `device`; None when it already is."""
    kind = KINDS[device]
    if config.instance_group and all(group.kind == kind for group in config.instance_group):
        return None
    placed = mc.ModelConfig()
    placed.CopyFrom(config)
    if not placed.instance_group:
        placed.instance_group.add(count=1)
    for group in placed.instance_group:
        group.kind = kind
    return placed


def backbone_folders(repository: Path) -> list[Path]:
    """Every backbone model of the repository: ArmoRM's and each other reward model's NAME_backbone."""
    return sorted(path.parent for path in repository.glob("*/config.pbtxt")
                  if path.parent.name == BACKBONE.name or path.parent.name.endswith("_backbone"))


def serving_repository(repository: Path, placement: Placement, scratch: Path) -> Path:
    """The repository tritonserver should load: `repository` itself when every backbone is already placed as
    asked, else a view of it under `scratch` with only the backbones' instance kinds changed."""
    if placement.device is None:
        return repository
    placed: dict[str, mc.ModelConfig] = {}
    for backbone in backbone_folders(repository):
        try:
            config = read_config(backbone / "config.pbtxt")
        except (OSError, text_format.ParseError) as err:
            raise PlacementError(f"cannot read {backbone / 'config.pbtxt'}: {err}") from None
        if placement.device == "cpu" and config.platform == "tensorrt_plan":
            raise PlacementError(f"{backbone.name} is a TensorRT plan, which runs only on a GPU: give the container "
                                 "a GPU or export another backbone (--backbone torch_packed)")
        config = placed_config(config, placement.device)
        if config is not None:
            placed[backbone.name] = config
    if not placed:
        return repository
    view = scratch / "repository"
    view.mkdir(parents=True)
    for entry in sorted(repository.iterdir()):
        if entry.name not in placed:
            (view / entry.name).symlink_to(entry.resolve())
    for name, config in placed.items():
        (view / name).mkdir()
        for entry in sorted((repository / name).iterdir()):
            if entry.name != "config.pbtxt":
                (view / name / entry.name).symlink_to(entry.resolve())
        (view / name / "config.pbtxt").write_text(
            f"# {repository / name / 'config.pbtxt'} with the instance kind for this node (armorm-serve)\n"
            + text_format.MessageToString(config))
    return view
