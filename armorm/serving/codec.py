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
