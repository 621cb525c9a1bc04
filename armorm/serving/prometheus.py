"""Reading Prometheus text exposition (Triton's /metrics) into sums per metric and label set."""

from __future__ import annotations

import re
import urllib.request

_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Samples = dict[str, list[tuple[dict[str, str], float]]]  # metric name → [(labels, value)]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match or line.startswith("#"):
            continue
        labels = dict(_LABEL.findall(match.group("labels") or ""))
        samples.setdefault(match.group("name"), []).append((labels, float(match.group("value"))))
    return samples


def scrape(url: str, timeout: float = 10.0) -> Samples:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - the operator's metrics URL
        return parse(response.read().decode())


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of `name` over every series whose labels include `labels`."""
    return sum(value for series, value in samples.get(name, []) if all(series.get(k) == v for k, v in labels.items()))
