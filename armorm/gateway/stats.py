"""The gateway's own counters, appended to Triton's /metrics in Prometheus text format (prometheus_client)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# Names, declared once; tests and docs/operations.md refer to these.
REQUESTS = "armorm_gateway_requests_total"
REFUSED = "armorm_gateway_refused_total"
ABANDONED = "armorm_gateway_abandoned_total"
IN_FLIGHT = "armorm_gateway_in_flight"
UPSTREAM_UNAVAILABLE = "armorm_gateway_upstream_unavailable_total"
BUFFERED_BYTES = "armorm_gateway_buffered_bytes"
BUFFERED_BYTES_LIMIT = "armorm_gateway_buffered_bytes_limit"
CONNECTIONS = "armorm_gateway_connections"
SHED = "armorm_gateway_connections_shed_total"


@dataclass(eq=False)  # identity-hashed: the registry keys its collectors by them
class GatewayStats:
    """Touched only from the gateway's event loop: no lock needed. Plain numbers that the admission logic reads
    too; exported at scrape time by a collector on a registry of this gateway's own (several gateways can live
    in one process, as in the tests)."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (protocol, api)
    refused: Counter[tuple[str, str]] = field(default_factory=Counter)  # (protocol, reason)
    abandoned: int = 0  # the caller left (cancelled, deadline); the upstream call ran to its end regardless
    in_flight: int = 0  # upstream inference calls not yet answered, abandoned ones included
    upstream_unavailable: int = 0  # Triton unreachable (restarting) or refusing
    buffered_bytes: int = 0  # request bytes held now against the budget (Admission.reserve)
    buffered_bytes_limit: int = 0
    connections: Counter[str] = field(default_factory=Counter)  # open connections now, by HTTP listener
    shed: Counter[tuple[str, str]] = field(default_factory=Counter)  # (listener, reason) connections closed
    registry: CollectorRegistry = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(REQUESTS, "Requests the gateway received, by protocol and API",
                                       labels=("protocol", "api"))
        for labels, count in sorted(self.requests.items()):
            requests.add_metric(labels, count)
        refused = CounterMetricFamily(REFUSED, "Requests the gateway answered itself without reaching the model "
                                               "server, by reason", labels=("protocol", "reason"))
        for labels, count in sorted(self.refused.items()):
            refused.add_metric(labels, count)
        yield requests
        yield refused
        yield CounterMetricFamily(ABANDONED, "Inference calls whose caller left first; the model server still "
                                             "finished them", value=self.abandoned)
        yield GaugeMetricFamily(IN_FLIGHT, "Inference calls inside the model server now", value=self.in_flight)
        yield CounterMetricFamily(UPSTREAM_UNAVAILABLE, "Calls answered UNAVAILABLE because the model server was "
                                                        "unreachable", value=self.upstream_unavailable)
        yield GaugeMetricFamily(BUFFERED_BYTES, "Request bytes the gateway holds now (bodies read, messages "
                                                "received, until the model server answers)", value=self.buffered_bytes)
        yield GaugeMetricFamily(BUFFERED_BYTES_LIMIT, "The budget for those bytes (--max-buffered-bytes): a request "
                                                      "over it is refused", value=self.buffered_bytes_limit)
        connections = GaugeMetricFamily(CONNECTIONS, "Open client connections, by HTTP listener",
                                        labels=("listener",))
        for listener, count in sorted(self.connections.items()):
            connections.add_metric((listener,), count)
        yield connections
        shed = CounterMetricFamily(SHED, "Client connections the gateway closed itself: slow headers or body, over a "
                                         "connection cap", labels=("listener", "reason"))
        for labels, count in sorted(self.shed.items()):
            shed.add_metric(labels, count)
        yield shed

    def prometheus(self) -> str:
        return generate_latest(self.registry).decode()
