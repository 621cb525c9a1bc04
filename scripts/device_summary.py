"""The device check's last word: one short table from the results.json files under its output folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fidelity_lines(data: dict) -> list[str]:
    """armorm.fidelity verdicts: the served (or packed) path's error against fp32 vs the card's own."""
    return [f"  fidelity {row['workload'][:40]:<40} RMS vs fp32: served {row['served_error']:.3g}, card "
            f"{row['card_error']:.3g}, bound {row['bound']:.3g} -> {'OK' if row['ok'] else 'FAIL'}"
            for row in data["fidelity"]]


def main(output: Path) -> int:
    lines, ok = [], True
    served = output / "served" / "results.json"
    if served.exists():
        data = json.loads(served.read_text())
        lines.append(f"served ({data['device']}, shape {data['shape']}; GEMM peak {data['gemm_peak_flops'] / 1e12:.1f} "
                     "TFLOP/s)")
        lines.append(f"  {'workload':<44} {'method':<26} {'conc':>4} {'req/s':>8} {'tok/s':>9} {'p50 ms':>8} "
                     f"{'p99 ms':>8} {'vs card':>7} {'% peak':>6}")
        for row in data["rows"]:
            lines.append(f"  {row['workload'][:44]:<44} {row['method'][:26]:<26} {row['concurrency']:>4} "
                         f"{row['req_per_s']:>8.2f} {row['tok_per_s']:>9.0f} {row['p50_ms']:>8.1f} "
                         f"{row['p99_ms']:>8.1f} {row['ratio_vs_card']:>6.2f}x {row['fraction_of_gemm_peak']:>6.1%}")
        lines += fidelity_lines(data)
        ok &= all(row["ok"] for row in data["fidelity"])
        lines.append(f"  max |served - card| score {data['max_score_difference']:.3g}")
    else:
        lines.append("served: no results (the step failed or was not selected)")
    packed = output / "packed" / "results.json"
    if packed.exists():
        data = json.loads(packed.read_text())
        lines.append(f"packed runtime in process ({data['device']}, shape {data['shape']})")
        for row in data["rows"]:
            lines.append(f"  {row['workload']:<16} {row['requests']:>4} reqs {row['tokens']:>7} tokens  "
                         f"{row['ratio_vs_card']:>5.2f}x card  {row['fraction_of_gemm_peak']:>6.1%} peak  "
                         f"max|Δscore| {row['max_score_difference']:.3g}")
        lines += fidelity_lines(data)
        ok &= all(row["ok"] for row in data["fidelity"])
    else:
        lines.append("packed: no results (the step failed or was not selected)")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "build/device-out")))
