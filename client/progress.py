"""armorm-score's progress line on a terminal (rows/s, tokens/s, ETA, errors so far), drawn by tqdm; silent when
stderr is not a terminal, so logs and pipes get only the final summary."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

# tqdm puts ", " before a postfix: "10/100 rows  52.1 rows/s, 8203 tok/s, 1 errors  ETA 00:02".
_WITH_TOTAL = "{n_fmt}/{total_fmt} rows  {rate_noinv_fmt}{postfix}  ETA {remaining}"
_WITHOUT_TOTAL = "{n_fmt} rows  {rate_noinv_fmt}{postfix}"


class Progress:
    def __init__(self, total: int | None, already: int = 0, stream: TextIO = sys.stderr,
                 interval: float = 0.25, enabled: bool | None = None) -> None:
        self.already = already
        self.enabled = stream.isatty() if enabled is None else enabled
        self.rows = self.tokens = self.errors = 0
        self.start = time.monotonic()
        self.bar = tqdm(total=total, initial=already, file=stream, disable=not self.enabled, unit=" rows",
                        mininterval=interval, leave=False, position=0,
                        bar_format=_WITH_TOTAL if total else _WITHOUT_TOTAL)

    @property
    def total(self) -> int | None:
        return self.bar.total

    @total.setter
    def total(self, value: int | None) -> None:
        self.bar.total = value
        self.bar.bar_format = _WITH_TOTAL if value else _WITHOUT_TOTAL

    def update(self, rows: int = 1, tokens: int = 0, errors: int = 0) -> None:
        self.rows += rows
        self.tokens += tokens
        self.errors += errors
        if self.enabled:
            elapsed = max(time.monotonic() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{self.tokens / elapsed:.0f} tok/s, {self.errors} errors", refresh=False)
            self.bar.update(rows)

    def finish(self) -> str:
        """The summary line (also printed when not on a terminal)."""
        self.bar.close()
        elapsed = time.monotonic() - self.start
        return (f"{self.rows} rows in {elapsed:.1f}s ({self.rows / max(elapsed, 1e-9):.1f} rows/s, "
                f"{self.tokens / max(elapsed, 1e-9):.0f} tokens/s), {self.errors} errors")
