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


def pad_right(rows: Sequence[np.ndarray], pad_value: int, dtype: type = np.int64) -> np.ndarray:
    """1-D rows of different lengths → [len(rows), longest], right-padded."""
    longest = max((row.shape[0] for row in rows), default=0)
    out = np.full((len(rows), longest), pad_value, dtype=dtype)
    for index, row in enumerate(rows):
        out[index, : row.shape[0]] = row
    return out


def token_budget_groups(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group row indices so each right-padded group holds at most `max_tokens` (rows × longest row).

    Rows are taken shortest first so neighbours pad little; a row longer than the budget gets a group
    of its own (it is run, never dropped).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for index in order:
        if current and (len(current) + 1) * lengths[index] > max_tokens:
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    return groups
