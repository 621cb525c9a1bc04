"""Run perf_analyzer (from tritonclient[all]==2.51.0) against the `armorm` ensemble.

It writes an --input-data file of conversations (BYTES `messages`, one entry per request, used
round-robin) and sets the library path perf_analyzer needs (libcudart.so.12 from the
nvidia-cuda-runtime-cu12 wheel; libb64 comes from the system package libb64-0d).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from armorm_client import contract
from armorm_client.samples import model_card_conversations


def perf_analyzer_binary() -> Path:
    found = shutil.which("perf_analyzer") or str(Path(sys.executable).parent / "perf_analyzer")
    if not Path(found).exists():
        raise FileNotFoundError("perf_analyzer not found: pip install 'tritonclient[all]==2.51.0'")
    return Path(found)


def perf_environment() -> dict[str, str]:
    env = dict(os.environ)
    try:
        import nvidia.cuda_runtime

        libdir = str(Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    except ImportError:
        pass  # a machine with CUDA installed has libcudart already
    return env


def mixed_conversations(count: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """The model card's examples plus synthetic ones of varied length."""
    rng = random.Random(seed)
    words = "the reward model scores each response for helpfulness safety and style".split()
    conversations = model_card_conversations()
    while len(conversations) < count:
        prompt = " ".join(rng.choices(words, k=rng.randint(4, 40)))
        response = " ".join(rng.choices(words, k=rng.randint(1, 120)))
        conversations.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])
    return conversations[:count]


def write_input_data(path: Path, conversations: Sequence[Sequence[dict[str, str]]]) -> Path:
    """--input-data for armorm: one `messages` row (JSON) per request."""
    return write_rows(path, contract.MESSAGES.name,
                      [json.dumps(list(messages), ensure_ascii=False) for messages in conversations])


def write_text_input_data(path: Path, texts: Sequence[str]) -> Path:
    """--input-data for armorm_text: one chat-templated `text` row per request."""
    return write_rows(path, contract.TEXT.name, texts)


def write_rows(path: Path, input_name: str, rows: Sequence[str]) -> Path:
    data = {"data": [{input_name: [row]} for row in rows]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False))
    return path


def perf_command(url: str, input_data: Path, extra: Sequence[str] = (), model: str = contract.ENSEMBLE.name,
                 protocol: str = "grpc") -> list[str]:
    return [str(perf_analyzer_binary()), "-m", model, "-u", url, "-i", protocol, "--input-data", str(input_data),
            *extra]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m armorm_client.perf", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="localhost:8001")
    parser.add_argument("--conversations", type=int, default=64, help="distinct requests in the input data")
    parser.add_argument("--input-data", type=Path, default=Path("build/perf_input.json"))
    parser.add_argument("extra", nargs="*", help="perf_analyzer flags after --, e.g. -- --concurrency-range 1:16:2")
    args = parser.parse_args(argv)
    write_input_data(args.input_data, mixed_conversations(args.conversations))
    extra = args.extra or ["--concurrency-range", "1:8:2"]
    command = perf_command(args.url, args.input_data, extra)
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    return subprocess.call(command, env=perf_environment())


if __name__ == "__main__":
    sys.exit(main())
