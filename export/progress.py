"""Step-by-step progress on stderr for long offline work."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def step(title: str) -> Iterator[None]:
    print(f"[export] {title} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    print(f"[export] {title}: done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)


def say(message: str) -> None:
    print(f"[export] {message}", file=sys.stderr, flush=True)
