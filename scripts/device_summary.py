"""The device check's last word: one short table from the results.json files under its output folder, the phases
each step did not reach, and (--check-limits) whether the folder fits what the device tool brings back.

    python scripts/device_summary.py OUT [--check-limits]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# What comes back from the device machine's $OUT (shared/platform.md): at most 8 files of ≤ 16 MiB, 64 MiB in all,
# at most two folders deep; this check holds $OUT to one folder down.
MAX_FILES, MAX_FILE_BYTES, MAX_TOTAL_BYTES, MAX_DEPTH = 8, 16 << 20, 64 << 20, 1


def limit_problems(output: Path) -> list[str]:
    files = [p for p in output.rglob("*") if not p.is_dir()]
    problems = []
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files under {output} (at most {MAX_FILES} come back)")
    for path in files:
        relative = path.relative_to(output)
        if path.is_symlink() or not path.is_file():
            problems.append(f"{relative}: not a plain file")
        elif path.stat().st_size > MAX_FILE_BYTES:
            problems.append(f"{relative}: {path.stat().st_size / 2**20:.1f} MiB (at most 16 MiB)")
        if len(relative.parts) - 1 > MAX_DEPTH:
            problems.append(f"{relative}: {len(relative.parts) - 1} folders down (at most {MAX_DEPTH})")
    total = sum(p.stat().st_size for p in files if p.is_file())
    if total > MAX_TOTAL_BYTES:
        problems.append(f"{total / 2**20:.1f} MiB in all (at most 64 MiB)")
    return problems


def missing_phases(data: dict) -> list[str]:
    phases = data.get("phases", {})
    return [p for p in phases.get("planned", []) if p not in phases.get("done", [])]


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
    if data.get("export_checked_against_fp32_on_cpu") is False:
        lines.append("  export: not checked against the fp32 reference on the CPU (8B: the gpu-tests and packed steps "
                     "check parity on the GPU; this step's fidelity lines judge the served scores)")
    return [*lines, f"  max |served - card| score {data.get('max_score_difference', float('nan')):.3g}"]


def packed_lines(data: dict) -> list[str]:
    return [f"packed runtime in process ({data['device']}, shape {data['shape']})"] + [
        f"  {row['workload']:<16} {row['requests']:>4} reqs {row['tokens']:>7} tokens  {row['ratio_vs_card']:>5.2f}x "
        f"card  {row['fraction_of_gemm_peak']:>6.1%} peak  max|Δscore| {row['max_score_difference']:.3g}"
        for row in data["rows"]]


def main(output: Path, check_limits: bool = False) -> int:
    lines, ok = [], True
    preflight = output / "preflight.txt"
    if preflight.exists():
        lines.append("pre-flight: " + preflight.read_text().strip().splitlines()[-1])
    for step, describe in (("served", served_lines), ("packed", packed_lines)):
        results = output / step / "results.json"
        if not results.exists():
            lines.append(f"{step}: no results (the step failed before its first phase, or was not selected)")
            continue
        data = json.loads(results.read_text())
        if data.get("rows"):
            lines += describe(data)
        lines += fidelity_lines(data)
        missing = missing_phases(data)
        if missing:
            ok = False
            lines.append(f"  {step}: phases not reached: {', '.join(missing)}")
        ok &= all(row["ok"] for row in data["fidelity"])
    if check_limits:
        problems = limit_problems(output)
        ok &= not problems
        lines += [f"$OUT limits: {p}" for p in problems] or [
            f"$OUT limits: ok ({sum(1 for p in output.rglob('*') if p.is_file())} files)"]
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, nargs="?", default=Path("build/device-out"))
    parser.add_argument("--check-limits", action="store_true", help="also fail if the folder breaks $OUT's limits")
    arguments = parser.parse_args()
    sys.exit(main(arguments.output, arguments.check_limits))
