"""One-run benchmark: the model card pipeline vs the served system, on the same sampled conversations.

(a) model card pipeline: in-process Hugging Face LlamaModel + heads, one conversation per forward;
(b) the served ensemble through the gRPC client at a concurrency sweep;
(c) best-of-N (N responses per prompt) both ways; served uses one request per prompt.
Each point runs its workload at least --repeats times and --min-seconds long; the median run is reported with
the spread of all runs. Reports req/s, tokens/s, p50/p99 latency, served/(a) ratios, the fraction of the
measured GEMM peak, and the bf16 fidelity of the served path (armorm.testing.fidelity: RMS error against an fp32
forward vs the card's own). Prints a table, writes build/bench/results.json and build/bench/bench.png.

CPU (default): a small random model. GPU (--shape llama3-8b): random weights in the exact 8B shape.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from armorm.model.backbone import default_dtype
from armorm.runtimes import DEFAULT_MAX_BATCH_TOKENS
from armorm.testing.fidelity import floor_for, judge
from armorm.testing.random_checkpoint import TinySizes
from armorm.testing.stages import Breakdown, Snapshot
from armorm.testing.workloads import best_of_n, flatten, mix

SHAPES = {
    # name: (sizes, short mix, long mix, best-of-N prompt tokens, response range)
    "cpu-small": (TinySizes(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
                            num_key_value_heads=2, gating_hidden_dim=256), (32, 256), (256, 1024), 128, (32, 128)),
    "llama3-8b": (TinySizes(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                            num_key_value_heads=8, gating_hidden_dim=1024), (128, 1024), (1024, 4096), 512, (128, 512)),
}


@dataclass
class Row:
    workload: str
    method: str
    concurrency: int
    requests: int
    tokens: int
    seconds: float
    p50_ms: float
    p99_ms: float
    computed_tokens: int = 0  # tokens the backbone computed (fewer than `tokens` when prompts are shared)
    repeats: int = 1  # the row is the median of this many runs of the workload
    low_req_per_s: float = 0.0  # slowest and fastest of those runs
    high_req_per_s: float = 0.0
    stages: Breakdown | None = None  # served rows: where the time went, over all runs of the point

    @property
    def spread(self) -> float:
        """(fastest − slowest) / median run, as a fraction."""
        return (self.high_req_per_s - self.low_req_per_s) / self.req_per_s if self.repeats > 1 else 0.0

    @property
    def req_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def tok_per_s(self) -> float:
        return self.tokens / self.seconds


def sync(device: str | torch.device) -> None:
    """Wait for the GPU, so that a timer measures the work and not its launch."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


MAX_REPEATS = 20


def measured(run: Callable[[], tuple[Row, list[float]]], min_repeats: int,
             min_seconds: float) -> tuple[Row, list[float]]:
    """Run a workload at least `min_repeats` times and for at least `min_seconds` (at most MAX_REPEATS runs);
    the median run by req/s, with the slowest and fastest. Scores come from the first run (same inputs)."""
    runs: list[Row] = []
    scores: list[float] = []
    start = time.perf_counter()
    while len(runs) < min_repeats or (time.perf_counter() - start < min_seconds and len(runs) < MAX_REPEATS):
        row, run_scores = run()
        runs.append(row)
        scores = scores or run_scores
    runs.sort(key=lambda r: r.req_per_s)
    median = runs[len(runs) // 2]
    median.repeats, median.low_req_per_s, median.high_req_per_s = len(runs), runs[0].req_per_s, runs[-1].req_per_s
    return median, scores


def card_pipeline(reference, conversations) -> tuple[Row, list[float]]:
    """The model card's loop: one conversation per forward, in process."""
    latencies, scores, tokens = [], [], 0
    start = time.perf_counter()
    for messages in conversations:
        t0 = time.perf_counter()
        result = reference.score(messages)
        sync(reference.device)
        latencies.append(time.perf_counter() - t0)
        scores.append(result.score)
        tokens += result.num_tokens
    seconds = time.perf_counter() - start
    return Row("", "model card pipeline", 1, len(conversations), tokens, seconds,
               *percentiles(latencies), computed_tokens=tokens), scores


def percentiles(latencies: list[float]) -> tuple[float, float]:
    return float(np.percentile(latencies, 50) * 1e3), float(np.percentile(latencies, 99) * 1e3)


async def served(url: str, batches, concurrency: int, method: str) -> tuple[Row, list[float]]:
    """Each batch is one request: a single conversation (score) or (prompt, responses) (score_responses).

    Returns the row and every conversation's score, in input order.
    """
    from armorm_client import AsyncArmoRMClient

    latencies: list[float] = []
    results: list[list] = [[] for _ in batches]
    slots = asyncio.Semaphore(concurrency)
    async with AsyncArmoRMClient(url, timeout_s=600) as client:
        async def one(index, batch):
            async with slots:
                t0 = time.perf_counter()
                if isinstance(batch, tuple):
                    results[index] = await client.score_responses(*batch)
                else:
                    results[index] = [await client.score(batch)]
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(one(i, b) for i, b in enumerate(batches)))
        seconds = time.perf_counter() - start
    flat = [r for group in results for r in group]
    return Row("", method, concurrency, len(flat), sum(r.num_tokens for r in flat), seconds,
               *percentiles(latencies)), [r.score for r in flat]


def gemm_peak_flops(device: str, dtype: torch.dtype) -> float:
    size = 8192 if device.startswith("cuda") else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    repeats = 20 if device.startswith("cuda") else 5
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def flops_per_token(sizes: TinySizes) -> float:
    h, i = sizes.hidden_size, sizes.intermediate_size
    kv = sizes.num_key_value_heads * (h // sizes.num_attention_heads)
    layer = h * h * 2 + h * kv * 2 + 3 * h * i
    return 2.0 * layer * sizes.num_hidden_layers


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [w for w in dict.fromkeys(r.workload for r in rows)
                 if any(r.workload == w and r.method != CARD for r in rows)]  # those with served points so far
    if not workloads:
        return
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False)
    for axis, workload in zip(axes[0], workloads):
        subset = [r for r in rows if r.workload == workload]
        card = next(r for r in subset if r.method == "model card pipeline")
        sweep = [r for r in subset if r.method != "model card pipeline"]
        axis.plot([r.concurrency for r in sweep], [r.tok_per_s for r in sweep], "o-", label=sweep[0].method)
        axis.axhline(card.tok_per_s, color="grey", linestyle="--", label="model card pipeline")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent requests")
        axis.set_ylabel("tokens / s")
        axis.set_title(workload)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass
class Results:
    """results.json, rewritten as each phase ends: a run killed by its timeout keeps every phase it finished, and
    `phases` says which ran (scripts/device_summary.py names the missing ones)."""

    path: Path
    header: dict
    planned: list[str]
    rows: list[Row] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    fidelity: list = field(default_factory=list)

    def phase(self, name: str) -> None:
        self.done.append(name)
        self.save()

    def save(self) -> None:
        cards = {r.workload: r for r in self.rows if r.method == CARD}
        summary = []
        for row in self.rows:
            card = cards.get(row.workload)
            ratio = row.req_per_s / card.req_per_s if card else None
            fraction = row.computed_tokens / row.seconds * self.header["flops_per_token"] / self.header[
                "gemm_peak_flops"]
            summary.append({**asdict(row), "req_per_s": row.req_per_s, "tok_per_s": row.tok_per_s,
                            "spread": row.spread, "ratio_vs_card": ratio, "fraction_of_gemm_peak": fraction})
        data = {**self.header, "phases": {"planned": self.planned, "done": self.done}, "rows": summary,
                "fidelity": [{**asdict(v), "ok": v.ok} for v in self.fidelity]}
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data, indent=2))
        temporary.replace(self.path)  # a reader never sees half a file


CARD = "model card pipeline"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu-small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                        help="auto: bf16 on a GPU, fp32 on CPU; bfloat16 on CPU rehearses the GPU's fidelity check")
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument("--long-conversations", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=8, help="best-of-N prompts")
    parser.add_argument("--n", type=int, default=8, help="responses per prompt")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--repeats", type=int, default=3, help="runs per point at least; the median is reported")
    parser.add_argument("--min-seconds", type=float, default=5.0, help="seconds of work per point at least")
    parser.add_argument("--output", type=Path, default=Path("build/bench"),
                        help="results.json and bench.png (nothing else)")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="checkpoint, repository and server logs (default: the output folder); the device check "
                             "keeps them out of $OUT")
    parser.add_argument("--fidelity-subset", type=int, default=0,
                        help="judge bf16 fidelity on the first N conversations of each workload (0: all): the fp32 "
                             "reference forward is the slow part on a GPU")
    parser.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS)
    parser.add_argument("--queue-delay-us", type=int, default=0,
                        help="max_queue_delay_microseconds of the tokenizer and the backbone (the export writes 0)")
    args = parser.parse_args()
    sizes, short_range, long_range, prompt_tokens, response_range = SHAPES[args.shape]
    scratch = args.scratch or args.output
    args.output.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    dtype = default_dtype(args.device) if args.dtype == "auto" else getattr(torch, args.dtype)
    concurrency = [int(c) for c in args.concurrency.split(",")]

    def say(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    workloads = {
        f"short mix {short_range[0]}-{short_range[1]}": mix(args.conversations, *short_range, seed=1),
        f"long mix {long_range[0]}-{long_range[1]}": mix(args.long_conversations, *long_range, seed=2),
    }
    groups = best_of_n(args.prompts, args.n, prompt_tokens, response_range, seed=3)
    bon_name = f"best-of-{args.n} (prompt {prompt_tokens}, responses {response_range[0]}-{response_range[1]})"
    flat = flatten(groups)
    peak = gemm_peak_flops(args.device, dtype)
    per_token = flops_per_token(sizes)
    served_points = [f"served {name} @ {c}" for name in [*workloads, bon_name] for c in concurrency]
    results = Results(args.output / "results.json",
                      {"device": args.device, "shape": args.shape, "dtype": str(dtype).removeprefix("torch."),
                       "gemm_peak_flops": peak, "flops_per_token": per_token},
                      ["checkpoint", "export", "card", "fp32 reference", *served_points])

    t0 = time.perf_counter()
    checkpoint = load_or_write_checkpoint(scratch / f"checkpoint-{args.shape}", sizes, args.device, say)
    results.phase("checkpoint")
    say(f"checkpoint ready in {time.perf_counter() - t0:.0f}s")
    repository = export_for_bench(checkpoint.directory, scratch / f"repository-{args.shape}", args, dtype, say)
    results.header["export_checked_against_fp32_on_cpu"] = args.shape != "llama3-8b"
    results.phase("export")

    from armorm.reference import ArmoRMReference

    say(f"model card pipeline on {args.device} ({dtype})")
    reference = ArmoRMReference(checkpoint, device=args.device, dtype=dtype)
    card_scores: dict[str, list[float]] = {}
    reference.score(workloads[next(iter(workloads))][0])  # warm-up
    for name, conversations in {**workloads, bon_name: flat}.items():
        row, card_scores[name] = measured(partial(card_pipeline, reference, conversations), args.repeats,
                                          args.min_seconds)
        row.workload = name
        results.rows.append(row)
        say(f"  {name}: {row.req_per_s:.2f} req/s")
    results.phase("card")
    del reference
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    subset = args.fidelity_subset or None
    fp32_scores = fp32_reference_scores(checkpoint, args.device, dtype,
                                        {name: c[:subset] for name, c in {**workloads, bon_name: flat}.items()},
                                        {name: s[:subset] for name, s in card_scores.items()}, say)
    del checkpoint  # the weights: the server loads its own copy
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    results.phase("fp32 reference")

    from armorm.serving import metrics
    from armorm.testing.prometheus import scrape, total
    from armorm.testing.serve_process import ServeProcess

    worst = 0.0
    served_scores: dict[str, list[list[float]]] = {name: [] for name in card_scores}

    def judged() -> list:
        floor = floor_for(str(dtype).removeprefix("torch."))
        return [judge(name, np.concatenate([s[:subset] for s in served_scores[name]]),
                      np.tile(card_scores[name][:subset], len(served_scores[name])),
                      np.tile(fp32_scores[name], len(served_scores[name])), floor=floor)
                for name in card_scores if served_scores[name]]

    with ServeProcess(repository, scratch / "logs", startup_timeout=900) as server:
        say(f"server ready on {server.grpc_url}")
        asyncio.run(served(server.grpc_url, workloads[next(iter(workloads))][:4], 4, "warm-up"))
        sweeps = [(name, conversations, "served (gRPC)") for name, conversations in workloads.items()]
        sweeps.append((bon_name, groups, "served best-of-N request"))
        for name, batches, method in sweeps:
            for c in concurrency:
                def point(batches=batches, c=c, method=method) -> tuple[Row, list[float]]:
                    before = total(scrape(server.metrics_url), metrics.BACKBONE_COMPUTED)
                    row, scores = asyncio.run(served(server.grpc_url, batches, c, method))
                    row.computed_tokens = int(total(scrape(server.metrics_url), metrics.BACKBONE_COMPUTED) - before)
                    return row, scores

                before = Snapshot.take(server.metrics_url, server.process.pid)
                row, scores = measured(point, args.repeats, args.min_seconds)
                row.stages = Breakdown.between(before, Snapshot.take(server.metrics_url, server.process.pid),
                                               row.requests * row.repeats)
                row.workload = name
                results.rows.append(row)
                worst = max(worst, float(np.abs(np.array(scores) - np.array(card_scores[name])).max()))
                served_scores[name].append(scores)
                results.header["max_score_difference"] = worst
                results.fidelity = judged()
                results.phase(f"served {name} @ {c}")
                say(f"  {name} @ {c}: {row.req_per_s:.2f} req/s")
            plot(results.rows, args.output / "bench.png")

    lines = table(results.rows, peak, per_token, args.device, dtype, args.shape)
    lines.append(f"max |served score - card score| over every benchmarked request: {worst:.3g}")
    if subset:
        lines.append(f"fidelity judged on the first {subset} conversations of each workload")
    lines += [verdict.line() for verdict in results.fidelity]
    print("\n".join(lines))
    print(f"plot: {args.output / 'bench.png'}; data: {results.path}")
    return 0 if all(v.ok for v in results.fidelity) else 1


def load_or_write_checkpoint(directory: Path, sizes: TinySizes, device: str, say):
    """The random checkpoint in memory (for the reference forwards) and on disk (for the export and the server).
    Drawn on the device (8B values on a CPU take most of a minute), kept there for the references."""
    from armorm.model.checkpoint import Checkpoint
    from armorm.testing.random_checkpoint import random_parameters, tiny_config, write_checkpoint

    if (directory / "config.json").exists():
        loaded = Checkpoint.load(directory)
        return Checkpoint(directory, loaded.config, {n: t.to(device) for n, t in loaded.state.items()})
    say(f"drawing random weights on {device} and writing them to {directory}")
    config = tiny_config(sizes)
    state = random_parameters(config, seed=7, device=device)
    write_checkpoint(directory, config, state)
    return Checkpoint(directory, config, state)


def export_for_bench(checkpoint: Path, repository: Path, args, dtype: torch.dtype, say) -> Path:
    from armorm_export.repository import ExportOptions, export_repository, read_config, set_parameter, write_config

    kind = "gpu" if args.device.startswith("cuda") else "cpu"
    # The 8B random model is not checked against an fp32 forward on the host here (two fp32 copies of 8B weights,
    # minutes): this benchmark's fidelity verdict and the device check's GPU parity steps check it instead.
    verify = args.shape != "llama3-8b"  # what Results records as export_checked_against_fp32_on_cpu
    say(f"exporting (torch_packed runtime){'' if verify else ', no CPU parity check (8B: checked on the GPU)'}")
    export_repository(checkpoint, repository, ExportOptions(instance_kind=kind, onnx=False, verify=verify,
                                                            atol=1e-3 if kind == "gpu" else 1e-4))
    config_path = repository / "armorm_backbone" / "config.pbtxt"
    config = read_config(config_path)
    set_parameter(config, "max_batch_tokens", str(args.max_batch_tokens))
    set_parameter(config, "dtype", str(dtype).removeprefix("torch."))
    write_config(config_path, config, "bench")
    for model in ("armorm_tokenizer", "armorm_backbone"):
        path = repository / model / "config.pbtxt"
        config = read_config(path)
        config.dynamic_batching.max_queue_delay_microseconds = args.queue_delay_us
        write_config(path, config, "bench")
    return repository


def table(rows: list[Row], peak: float, per_token: float, device: str, dtype: torch.dtype, shape: str) -> list[str]:
    lines = [f"device {device}, dtype {str(dtype).removeprefix('torch.')}, shape {shape}; measured GEMM peak "
             f"{peak / 1e12:.2f} TFLOP/s; {per_token / 1e9:.3f} GFLOP/token",
             f"{'workload':<44} {'method':<26} {'conc':>4} {'req/s':>8} {'tok/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
             f"{'vs card':>7} {'% peak':>6} {'spread':>7} {'runs':>4}  (median run; spread: (fastest − slowest) ÷ "
             "median; % peak: backbone-computed tokens × FLOP/token ÷ GEMM peak)"]
    for row in rows:
        card = next(r for r in rows if r.workload == row.workload and r.method == CARD)
        ratio = row.req_per_s / card.req_per_s
        fraction = row.computed_tokens / row.seconds * per_token / peak
        lines.append(f"{row.workload:<44} {row.method:<26} {row.concurrency:>4} {row.req_per_s:>8.2f} "
                     f"{row.tok_per_s:>9.0f} {row.p50_ms:>8.1f} {row.p99_ms:>8.1f} {ratio:>6.2f}x {fraction:>6.1%} "
                     f"{row.spread:>6.0%} {row.repeats:>4}")
        if row.stages is not None:
            lines += row.stages.lines()
    for workload in dict.fromkeys(r.workload for r in rows):
        card = next(r for r in rows if r.workload == workload and r.method == CARD)
        served_rows = [r for r in rows if r.workload == workload and r is not card]
        if not served_rows:
            continue
        best = max(served_rows, key=lambda r: r.req_per_s)
        lines.append(f"{workload}: served at its best concurrency ({best.concurrency}) is "
                     f"{best.req_per_s / card.req_per_s:.2f}x the card "
                     f"(spread {best.spread:.0%}; card's {card.spread:.0%})")
    return lines


def fp32_reference_scores(checkpoint, device: str, dtype: torch.dtype, workloads: dict, card_scores: dict,
                          say) -> dict[str, list[float]]:
    """Every judged conversation's score from an fp32 forward (armorm.testing.fidelity judges both paths by it), on
    the device, from the weights already in memory. When the card already ran in fp32, its scores are that
    reference."""
    if dtype == torch.float32:
        return card_scores
    from armorm.reference import ArmoRMReference

    say(f"fp32 reference forward on {device} for the fidelity criterion")
    reference = ArmoRMReference(checkpoint, device=device, dtype=torch.float32)
    scores = {name: [reference.score(m).score for m in conversations] for name, conversations in workloads.items()}
    del reference
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return scores


if __name__ == "__main__":
    sys.exit(main())
