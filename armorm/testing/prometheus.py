"""Reading a Prometheus text exposition (Triton's and the gateway's /metrics) into sums per metric and label set,
for tests and benchmarks: `prometheus_client` parses, this only indexes the samples by name."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, list[tuple[dict[str, str], float]]]  # sample name (as exposed) → [(labels, value)]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            # The parser names every counter sample <family>_total; Triton exposes its counters without the
            # suffix, so a counter is found under both names.
            names = {sample.name, family.name} if family.type == "counter" and sample.name.endswith("_total") \
                else {sample.name}
            for name in names:
                samples.setdefault(name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def scrape(url: str, timeout: float = 10.0) -> Samples:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - the operator's metrics URL
        return parse(response.read().decode())


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of `name` over every series whose labels include `labels`."""
    return sum(value for series, value in samples.get(name, []) if all(series.get(k) == v for k, v in labels.items()))
