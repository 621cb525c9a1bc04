"""The gateway in front of tritonserver: the only listener clients reach (see gateway.py for why)."""

from armorm.gateway.admission import DRAINING_MESSAGE
from armorm.gateway.config import (
    ConnectionLimits,
    GatewayConfig,
    GatewayStartError,
    PortTakenError,
    TlsFiles,
    Upstream,
)
from armorm.gateway.gateway import Gateway
from armorm.gateway.routes import ADMIN_APIS, PUBLIC_MODELS, AccessPolicy, Api

__all__ = ["ADMIN_APIS", "PUBLIC_MODELS", "AccessPolicy", "Api", "ConnectionLimits", "DRAINING_MESSAGE", "Gateway",
           "GatewayConfig", "GatewayStartError", "PortTakenError", "TlsFiles", "Upstream"]
