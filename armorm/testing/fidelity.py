"""bf16 fidelity with a criterion that cannot hide real errors.

A flat tolerance on |served − card| is either loose enough to pass an off-by-one in positions or tight enough to
fail on rounding. Instead both bf16 paths are measured against an fp32 reference forward of the same
conversations: the served path's error may be at most FACTOR × the model card pipeline's own bf16 error, plus
FLOOR (in score units, for workloads where the card's error is near zero, e.g. fp32 on CPU). The error is the
root mean square over the workload: the max of two equally noisy paths differs by more than 1.5x from sample to
sample (seen on CPU in bf16: 0.8x to 1.8x), their RMS by 1.0x to 1.3x, while an off-by-one in positions moves it
several-fold. Used by the benchmark, the GPU check and the fault-injection tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FACTOR = 1.5
FLOOR = 1e-3  # bf16
FP32_FLOOR = 1e-4  # both paths in fp32 (CPU): float noise only


def floor_for(dtype_name: str) -> float:
    return FP32_FLOOR if dtype_name == "float32" else FLOOR


@dataclass(frozen=True)
class Fidelity:
    workload: str
    served_error: float  # RMS of (served − fp32) over the workload's conversations
    card_error: float  # RMS of (card bf16 − fp32)
    bound: float
    served_max: float  # the largest single |served − fp32|, for the record

    @property
    def ok(self) -> bool:
        return self.served_error <= self.bound

    def line(self) -> str:
        return (f"fidelity {self.workload}: RMS error vs fp32: served {self.served_error:.3g}, card "
                f"{self.card_error:.3g}, bound {self.bound:.3g} (served max {self.served_max:.3g}) -> "
                f"{'OK' if self.ok else 'FAIL'}")


def judge(workload: str, served: Sequence[float], card: Sequence[float], fp32: Sequence[float],
          factor: float = FACTOR, floor: float = FLOOR) -> Fidelity:
    reference = np.asarray(fp32, dtype=np.float64)
    served_gap = np.asarray(served, dtype=np.float64) - reference
    card_gap = np.asarray(card, dtype=np.float64) - reference
    card_error = float(np.sqrt(np.mean(card_gap**2)))
    return Fidelity(workload, float(np.sqrt(np.mean(served_gap**2))), card_error, factor * card_error + floor,
                    float(np.abs(served_gap).max()))
