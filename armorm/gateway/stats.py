"""The gateway's own counters, appended to Triton's /metrics in Prometheus text format."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Names, declared once; tests and the README refer to these.
REQUESTS = "armorm_gateway_requests_total"
REFUSED = "armorm_gateway_refused_total"
ABANDONED = "armorm_gateway_abandoned_total"
IN_FLIGHT = "armorm_gateway_in_flight"
UPSTREAM_UNAVAILABLE = "armorm_gateway_upstream_unavailable_total"


@dataclass
class GatewayStats:
    """Touched only from the gateway's event loop: no lock needed."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (protocol, api)
    refused: Counter[tuple[str, str]] = field(default_factory=Counter)  # (protocol, reason)
    abandoned: int = 0  # the caller left (cancelled, deadline); the upstream call ran to its end regardless
    in_flight: int = 0  # upstream inference calls not yet answered, abandoned ones included
    upstream_unavailable: int = 0  # Triton unreachable (restarting) or refusing

    def prometheus(self) -> str:
        lines = [
            f"# HELP {REQUESTS} Requests the gateway received, by protocol and API",
            f"# TYPE {REQUESTS} counter",
            *(f'{REQUESTS}{{protocol="{p}",api="{a}"}} {n}' for (p, a), n in sorted(self.requests.items())),
            f"# HELP {REFUSED} Requests the gateway answered itself without reaching the model server, by reason",
            f"# TYPE {REFUSED} counter",
            *(f'{REFUSED}{{protocol="{p}",reason="{r}"}} {n}' for (p, r), n in sorted(self.refused.items())),
            f"# HELP {ABANDONED} Inference calls whose caller left first; the model server still finished them",
            f"# TYPE {ABANDONED} counter",
            f"{ABANDONED} {self.abandoned}",
            f"# HELP {IN_FLIGHT} Inference calls inside the model server now",
            f"# TYPE {IN_FLIGHT} gauge",
            f"{IN_FLIGHT} {self.in_flight}",
            f"# HELP {UPSTREAM_UNAVAILABLE} Calls answered UNAVAILABLE because the model server was unreachable",
            f"# TYPE {UPSTREAM_UNAVAILABLE} counter",
            f"{UPSTREAM_UNAVAILABLE} {self.upstream_unavailable}",
        ]
        return "\n".join(lines) + "\n"
