"""armorm-export: a reward model checkpoint (directory or hub id) → a deployable Triton model repository.

ArmoRM is written as `armorm` (and `armorm_text`); a Bradley–Terry model (LlamaForSequenceClassification, one
label: FsfairX, Skywork-Reward) as the ensemble --name NAME, beside the models already in the repository."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from armorm_export.parity import ExportParityError
from armorm_export.repository import BACKBONES, ExportOptions, export_repository

# Three overlapping flags once chose how the backbone runs; --backbone is the one knob now.
RETIRED_FLAGS = {
    "--runtime": "use --backbone torch_packed or --backbone onnxruntime",
    "--triton-backend": "use --backbone onnxruntime-native or --backbone tensorrt (python: the default)",
    "--tensorrt": "use --backbone tensorrt",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="armorm-export", description=__doc__)
    parser.add_argument("checkpoint", help="checkpoint directory or hub id, e.g. RLHFlow/ArmoRM-Llama3-8B-v0.1")
    parser.add_argument("output", type=Path, help="model repository directory to write (other models in it stay)")
    parser.add_argument("--name", default=None,
                        help="the ensemble's name for a Bradley–Terry model (e.g. fsfairx); ArmoRM is always armorm")
    parser.add_argument("--instance-kind", choices=("auto", "cpu", "gpu"), default="auto",
                        help="where the backbone runs; auto: GPU if torch sees one here")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="longest conversation accepted (default: the checkpoint's max_position_embeddings)")
    parser.add_argument("--truncate", action="store_true",
                        help="score the first --max-tokens tokens of longer conversations, as the model card's "
                             "pipeline does (truncation=True); default: refuse them with INVALID_ARGUMENT")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="fail when ONNX Runtime differs from the reference forward by more than this")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="torch_packed",
                        help="how the backbone runs: " + "; ".join(f"{key}: {b.help}" for key, b in BACKBONES.items()))
    parser.add_argument("--no-onnx", action="store_true",
                        help="skip the ONNX export (torch_packed only; saves disk and time for the 8B model)")
    for old in RETIRED_FLAGS:
        parser.add_argument(old, nargs="?", const="", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for old, advice in RETIRED_FLAGS.items():
        if getattr(args, old.lstrip("-").replace("-", "_")) is not None:
            parser.error(f"{old} is gone: {advice}")
    kind = args.instance_kind
    if kind == "auto":
        import torch

        kind = "gpu" if torch.cuda.is_available() else "cpu"
    try:
        export_repository(args.checkpoint, args.output,
                          ExportOptions(instance_kind=kind, max_tokens=args.max_tokens, atol=args.atol,
                                        backbone=args.backbone, onnx=not args.no_onnx,
                                        truncate=args.truncate), name=args.name)
    except (ExportParityError, ValueError) as err:
        print(f"[export] FAILED: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
