"""The gateway in front of tritonserver: the only listener clients reach (see gateway.py for why)."""

from armorm.gateway.gateway import (
    DRAINING_MESSAGE,
    Gateway,
    GatewayConfig,
    GatewayStartError,
    TlsFiles,
    UpstreamSockets,
)
from armorm.gateway.routes import ADMIN_APIS, AccessPolicy, Api

__all__ = ["ADMIN_APIS", "AccessPolicy", "Api", "DRAINING_MESSAGE", "Gateway", "GatewayConfig", "GatewayStartError",
           "TlsFiles", "UpstreamSockets"]
