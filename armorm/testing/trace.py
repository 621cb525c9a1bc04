"""Triton's own request trace (`--trace-config level=TIMESTAMPS`) read back: when each model's requests were
queued and computed, and the longest time a model sat idle while a request waited for it (a scheduler stall)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RequestSpan:
    """One request's passage through one model, in ns of the server's steady clock."""

    model: str
    queued: int  # QUEUE_START
    started: int  # COMPUTE_START (the batch it ran in)
    ended: int  # COMPUTE_END


def trace_arguments(path: Path) -> list[str]:
    """tritonserver flags that trace every request's timestamps to files `path`.N."""
    return [f"--trace-config=triton,file={path}", "--trace-config=level=TIMESTAMPS", "--trace-config=rate=1",
            "--trace-config=triton,log-frequency=1"]


def read_spans(files: Iterable[Path]) -> list[RequestSpan]:
    models: dict[int, str] = {}
    stamps: dict[int, dict[str, int]] = defaultdict(dict)
    for file in files:
        for entry in json.loads(file.read_text() or "[]"):
            if "model_name" in entry:
                models[entry["id"]] = entry["model_name"]
            for stamp in entry.get("timestamps", ()):
                stamps[entry["id"]][stamp["name"]] = int(stamp["ns"])
    return [RequestSpan(models[i], s["QUEUE_START"], s["COMPUTE_START"], s["COMPUTE_END"])
            for i, s in stamps.items() if i in models and {"QUEUE_START", "COMPUTE_START", "COMPUTE_END"} <= s.keys()]


def trace_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + "*"))


def longest_idle_wait_s(spans: Iterable[RequestSpan], model: str) -> float:
    """The longest stretch (s) in which a request waited in `model`'s queue while no batch of it ran.

    One instance assumed (the backbone's): a batch runs over [COMPUTE_START, COMPUTE_END] of its requests."""
    mine = [s for s in spans if s.model == model]
    busy = sorted({(s.started, s.ended) for s in mine})
    longest = 0
    for span in mine:  # idle parts of [queued, started) not covered by any batch
        cursor = span.queued
        for start, end in busy:
            if end <= cursor:
                continue
            if start >= span.started:
                break
            longest = max(longest, min(start, span.started) - cursor)
            cursor = max(cursor, end)
        longest = max(longest, span.started - cursor)
    return longest / 1e9
