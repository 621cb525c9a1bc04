"""The device check's last word: one short table from the results.json files under its output folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fidelity_lines(data: dict) -> list[str]:
    """armorm.testing.fidelity verdicts: the served (or packed) path's error against fp32 vs the card's own."""
    return [f"  fidelity {row['workload'][:40]:<40} RMS vs fp32: served {row['served_error']:.3g}, card "
            f"{row['card_error']:.3g}, bound {row['bound']:.3g} -> {'OK' if row['ok'] else 'FAIL'}"
            for row in data["fidelity"]]


def served_lines(data: dict) -> list[str]:
    peak = data["gemm_peak_flops"] / 1e12
    lines = [f"served ({data['device']}, shape {data['shape']}; GEMM peak {peak:.1f} TFLOP/s)",
             f"  {'workload':<44} {'method':<26} {'conc':>4} {'req/s':>8} {'tok/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
             f"{'vs card':>7} {'% peak':>6}"]
    lines += [f"  {row['workload'][:44]:<44} {row['method'][:26]:<26} {row['concurrency']:>4} "
              f"{row['req_per_s']:>8.2f} {row['tok_per_s']:>9.0f} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} "
              f"{row['ratio_vs_card']:>6.2f}x {row['fraction_of_gemm_peak']:>6.1%}" for row in data["rows"]]
    return [*lines, f"  max |served - card| score {data['max_score_difference']:.3g}"]


def packed_lines(data: dict) -> list[str]:
    return [f"packed runtime in process ({data['device']}, shape {data['shape']})"] + [
        f"  {row['workload']:<16} {row['requests']:>4} reqs {row['tokens']:>7} tokens  {row['ratio_vs_card']:>5.2f}x "
        f"card  {row['fraction_of_gemm_peak']:>6.1%} peak  max|Δscore| {row['max_score_difference']:.3g}"
        for row in data["rows"]]


def main(output: Path) -> int:
    lines, ok = [], True
    for step, describe in (("served", served_lines), ("packed", packed_lines)):
        results = output / step / "results.json"
        if not results.exists():
            lines.append(f"{step}: no results (the step failed or was not selected)")
            continue
        data = json.loads(results.read_text())
        lines += describe(data) + fidelity_lines(data)
        ok &= all(row["ok"] for row in data["fidelity"])
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "build/device-out")))
