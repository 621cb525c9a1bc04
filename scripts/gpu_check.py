"""GPU check: bf16 fidelity (armorm.testing.fidelity) and throughput of the packed runtime against the model card
pipeline, in one process, on random weights in the exact Llama-3-8B shape (bf16). On the device machine it runs
as the `packed` step of scripts/device_check.sh; here `make gpu-check`, or on CPU with
`--shape cpu-small --device cpu [--dtype bfloat16]`. What it does not cover: the Triton hop (gRPC, ensemble, Python
stubs), which needs the pip tritonserver on the device; `make bench` measures that.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import SHAPES, card_pipeline, flops_per_token, gemm_peak_flops, sync  # noqa: E402

from armorm.model import heads  # noqa: E402
from armorm.model.backbone import ArmoRMBackbone, default_dtype  # noqa: E402
from armorm.model.checkpoint import Checkpoint, load_tokenizer  # noqa: E402
from armorm.model.conversation import ConversationTokenizer, InputLimits  # noqa: E402
from armorm.model.packed import PackedBackbone  # noqa: E402
from armorm.reference import ArmoRMReference  # noqa: E402
from armorm.runtimes import DEFAULT_MAX_BATCH_TOKENS  # noqa: E402
from armorm.testing.fidelity import floor_for, judge  # noqa: E402
from armorm.testing.random_checkpoint import random_parameters, tiny_config, write_tokenizer  # noqa: E402
from armorm.testing.workloads import best_of_n, flatten, mix  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                        help="auto: bf16 on a GPU, fp32 on CPU; bfloat16 on CPU rehearses the GPU's fidelity check")
    parser.add_argument("--short", type=int, default=64)
    parser.add_argument("--long", type=int, default=24)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS)
    parser.add_argument("--output", type=Path, default=None, help="write results.json there")
    args = parser.parse_args()
    device = args.device
    dtype = default_dtype(device) if args.dtype == "auto" else getattr(torch, args.dtype)
    sizes, short_range, long_range, prompt_tokens, response_range = SHAPES[args.shape]
    config = tiny_config(sizes)
    t0 = time.perf_counter()
    state = random_parameters(config, seed=11, device=device)
    directory = Path(tempfile.mkdtemp(prefix="armorm-gpu-check-"))
    write_tokenizer(directory, config)
    checkpoint = Checkpoint(directory, config, state)
    reference = ArmoRMReference(checkpoint, device=device, dtype=dtype)
    packed = PackedBackbone(ArmoRMBackbone.from_state_dict(config, state, dtype).to(device), args.max_batch_tokens)
    # The served path's own tokenizer and heads: what runs behind the packed runtime in the served ensemble.
    tokenizer = ConversationTokenizer(load_tokenizer(directory), InputLimits(max_tokens=config.max_position_embeddings))
    served_heads = heads.HeadWeights.from_state_dict(state, config).to(device)
    print(f"[gpu-check] {args.shape} weights on {device} ({dtype}) in {time.perf_counter() - t0:.1f}s; "
          f"attention {packed.attention_name}", file=sys.stderr, flush=True)

    groups = best_of_n(args.prompts, args.n, prompt_tokens, response_range, seed=3)
    workloads = {
        f"short {short_range[0]}-{short_range[1]}": mix(args.short, *short_range, seed=1),
        f"long {long_range[0]}-{long_range[1]}": mix(args.long, *long_range, seed=2),
        f"best-of-{args.n}": flatten(groups),
    }
    peak = gemm_peak_flops(device, dtype)
    per_token = flops_per_token(sizes)
    rows, worst, scores = [], 0.0, {}
    fidelity: list = []
    planned = [*workloads, "fidelity"]
    done: list[str] = []

    def save(phase: str) -> None:
        """results.json after each phase: a step killed by its timeout keeps what it finished."""
        done.append(phase)
        if args.output is None:
            return
        args.output.mkdir(parents=True, exist_ok=True)
        temporary = args.output / "results.json.tmp"
        temporary.write_text(json.dumps({
            "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu", "shape": args.shape,
            "gemm_peak_flops": peak, "flops_per_token": per_token, "max_score_difference": worst,
            "phases": {"planned": planned, "done": done},
            "fidelity": [{**asdict(v), "ok": v.ok} for v in fidelity], "rows": [
                {"workload": name, "requests": count, "tokens": total, "card_seconds": card_s,
                 "packed_seconds": packed_s, "ratio_vs_card": card_s / packed_s,
                 "fraction_of_gemm_peak": stats.computed_tokens / packed_s * per_token / peak,
                 "max_score_difference": difference}
                for name, count, total, card_s, packed_s, difference, stats in rows]}, indent=2))
        temporary.replace(args.output / "results.json")

    reference.score(workloads[next(iter(workloads))][0])  # warm-up
    for name, conversations in workloads.items():
        card_row, card_scores = card_pipeline(reference, conversations)
        card, card_s = np.array(card_scores), card_row.seconds
        tokens = [tokenizer.tokenize(m) for m in conversations]
        total = sum(t.num_tokens for t in tokens)
        ids = [t.input_ids for t in tokens]
        gates = np.array([t.gate_position for t in tokens])
        rewards = np.array([t.reward_position for t in tokens])
        packed.run(ids[:2], gates[:2], rewards[:2])  # warm-up of this shape mix
        sync(device)
        start = time.perf_counter()
        gate, reward = packed.run(ids, gates, rewards)
        served = heads.score_rows(gate, reward, served_heads)[0].cpu().numpy()
        sync(device)
        packed_s = time.perf_counter() - start
        difference = float(np.abs(served - card).max())
        scores[name] = (conversations, served, card)
        worst = max(worst, difference)
        rows.append((name, len(conversations), total, card_s, packed_s, difference, packed.last_stats))
        print(f"[gpu-check] {name}: card {len(conversations) / card_s:.1f} req/s, packed "
              f"{len(conversations) / packed_s:.1f} req/s", file=sys.stderr, flush=True)
        save(name)

    print(f"device {torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'}; torch {torch.__version__}; "
          f"GEMM peak {peak / 1e12:.2f} TFLOP/s; {per_token / 1e9:.2f} GFLOP/token; budget {args.max_batch_tokens}")
    print(f"{'workload':<16} {'reqs':>5} {'tokens':>7} {'card req/s':>10} {'card tok/s':>10} {'packed req/s':>12} "
          f"{'packed tok/s':>12} {'ratio':>6} {'% peak':>7} {'computed':>8} {'max|Δscore|':>11}")
    for name, count, total, card_s, packed_s, difference, stats in rows:
        print(f"{name:<16} {count:>5} {total:>7} {count / card_s:>10.1f} {total / card_s:>10.0f} "
              f"{count / packed_s:>12.1f} {total / packed_s:>12.0f} {card_s / packed_s:>5.2f}x "
              f"{stats.computed_tokens / packed_s * per_token / peak:>7.1%} "
              f"{stats.computed_tokens / total:>8.0%} {difference:>11.3g}")
    del reference, packed
    fp32_reference = ArmoRMReference(checkpoint, device=device, dtype=torch.float32) if dtype != torch.float32 else None
    for name, (conversations, served, card) in scores.items():
        fp32 = card if fp32_reference is None else [fp32_reference.score(m).score for m in conversations]
        fidelity.append(judge(name, served, card, fp32, floor=floor_for(str(dtype).removeprefix("torch."))))
    print(f"max |packed score - card score| = {worst:.3g} ({dtype})")
    print("\n".join(verdict.line() for verdict in fidelity))
    save("fidelity")
    return 0 if all(v.ok for v in fidelity) else 1


if __name__ == "__main__":
    sys.exit(main())
