"""A one-line progress report on a terminal (rows/s, tokens/s, ETA, errors so far); silent when stderr is not
a terminal, so logs and pipes get only the final summary."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    def __init__(self, total: int | None, already: int = 0, stream: TextIO = sys.stderr,
                 interval: float = 0.25, enabled: bool | None = None) -> None:
        self.total, self.already, self.stream, self.interval = total, already, stream, interval
        self.enabled = stream.isatty() if enabled is None else enabled
        self.rows = self.tokens = self.errors = 0
        self.start = self.last_drawn = time.monotonic()

    def update(self, rows: int = 1, tokens: int = 0, errors: int = 0) -> None:
        self.rows += rows
        self.tokens += tokens
        self.errors += errors
        now = time.monotonic()
        if self.enabled and now - self.last_drawn >= self.interval:
            self.last_drawn = now
            self.stream.write("\r" + self.line(now) + "\033[K")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.start, 1e-9)
        rate = self.rows / elapsed
        done = self.already + self.rows
        position = f"{done}/{self.total}" if self.total is not None else f"{done}"
        parts = [f"{position} rows", f"{rate:.1f} rows/s", f"{self.tokens / elapsed:.0f} tok/s"]
        if self.total is not None and rate > 0:
            parts.append(f"ETA {duration((self.total - done) / rate)}")
        parts.append(f"{self.errors} errors")
        return "  ".join(parts)

    def finish(self) -> str:
        """The summary line (also printed when not on a terminal)."""
        if self.enabled:
            self.stream.write("\r\033[K")
        elapsed = time.monotonic() - self.start
        return (f"{self.rows} rows in {elapsed:.1f}s ({self.rows / max(elapsed, 1e-9):.1f} rows/s, "
                f"{self.tokens / max(elapsed, 1e-9):.0f} tokens/s), {self.errors} errors")
