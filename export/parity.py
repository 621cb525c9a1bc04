"""The export's parity gate: a backbone runtime against the reference forward's hidden rows."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from armorm.reference import ParityRows


class ExportParityError(RuntimeError):
    """A runtime disagrees with the reference forward by more than the tolerance."""


def check_runtime(name: str, run: Callable[[list[np.ndarray], np.ndarray, np.ndarray], tuple], rows: ParityRows,
                  atol: float) -> float:
    """Run `name` (a runtime's `.run`) on every conversation of `rows`; return the max abs error of the
    hidden rows. Raises ExportParityError, with the measured error, above `atol`."""
    gate, reward = run(rows.input_ids, rows.gate_positions, rows.reward_positions)
    error = rows.max_error(gate, reward)
    if error > atol:
        raise ExportParityError(f"{name} differs from the reference forward by {error:.3g} (> atol {atol:g})")
    return error
