"""Triton tensors ↔ plain arrays: merging a dynamic batch's requests and splitting results back.

The served `model.py` files pass numpy arrays in and get numpy arrays out; nothing here imports
the Triton stub, so tests drive it directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def batch_sizes(arrays: Sequence[np.ndarray]) -> list[int]:
    return [int(a.shape[0]) for a in arrays]


def split_rows(array: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """Inverse of np.concatenate along axis 0 for requests of the given batch sizes."""
    return np.split(array, np.cumsum(sizes)[:-1]) if len(sizes) else []


def bytes_items(array: np.ndarray) -> list[bytes]:
    """A BYTES tensor [batch, 1] (object array) → one bytes value per row."""
    return [item if isinstance(item, bytes) else bytes(item) for item in array.reshape(-1)]


def distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of one row per distinct bit pattern, each row's slot among them), so rows[first][inverse] == rows.

    Each row is compared as one opaque byte string (memcmp): np.unique(axis=0) compares them column by column
    as a structured type, 0.4 ms per call at hidden 256 and 25-35 ms at 4096 (docs/benchmarks.md)."""
    rows = np.ascontiguousarray(rows)
    if rows.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    opaque = rows.reshape(rows.shape[0], -1).view(np.dtype((np.void, rows[0].nbytes))).reshape(-1)
    _, first, inverse = np.unique(opaque, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def distinct_sequences(input_ids: Sequence[np.ndarray], gate_positions: np.ndarray, reward_positions: np.ndarray,
                       ) -> tuple[list[int], np.ndarray]:
    """(index of one conversation per distinct (ids, gate, reward), each conversation's slot among them): the same
    conversation sent twice in one batch (two reward models sharing this backbone, a retried request) is computed
    once. Keys are the ids' bytes, compared exactly."""
    slots: dict[tuple[bytes, int, int], int] = {}
    first: list[int] = []
    inverse = np.empty(len(input_ids), np.int64)
    for index, (ids, gate, reward) in enumerate(zip(input_ids, gate_positions, reward_positions)):
        key = (np.ascontiguousarray(ids, dtype=np.int64).tobytes(), int(gate), int(reward))
        slot = slots.setdefault(key, len(first))
        if slot == len(first):
            first.append(index)
        inverse[index] = slot
    return first, inverse
