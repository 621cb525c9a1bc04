"""armorm-export: an ArmoRM checkpoint (directory or hub id) → a deployable Triton model repository."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from armorm_export.parity import ExportParityError
from armorm_export.repository import ExportOptions, export_repository


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="armorm-export", description=__doc__)
    parser.add_argument("checkpoint", help="checkpoint directory or hub id, e.g. RLHFlow/ArmoRM-Llama3-8B-v0.1")
    parser.add_argument("output", type=Path, help="model repository directory to write")
    parser.add_argument("--instance-kind", choices=("auto", "cpu", "gpu"), default="auto",
                        help="where the backbone runs; auto: GPU if torch sees one here")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="longest conversation accepted (default: the checkpoint's max_position_embeddings)")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="fail when ONNX Runtime differs from the reference forward by more than this")
    parser.add_argument("--runtime", choices=("torch_packed", "onnxruntime"), default="torch_packed",
                        help="backbone runtime the config selects (both artifacts are written unless --no-onnx)")
    parser.add_argument("--no-onnx", action="store_true",
                        help="skip the ONNX export (torch_packed only; saves disk and time for the 8B model)")
    parser.add_argument("--triton-backend", choices=("python", "onnxruntime", "tensorrt"), default="python",
                        help="serve the backbone with Triton's native ONNX Runtime or TensorRT backend (NGC container)")
    parser.add_argument("--tensorrt", action="store_true",
                        help="also build a TensorRT plan where tensorrt is installed")
    args = parser.parse_args(argv)
    kind = args.instance_kind
    if kind == "auto":
        import torch

        kind = "gpu" if torch.cuda.is_available() else "cpu"
    try:
        export_repository(args.checkpoint, args.output,
                          ExportOptions(instance_kind=kind, max_tokens=args.max_tokens, atol=args.atol,
                                        tensorrt=args.tensorrt, runtime=args.runtime, onnx=not args.no_onnx,
                                        triton_backend=args.triton_backend))
    except (ExportParityError, ValueError) as err:
        print(f"[export] FAILED: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
