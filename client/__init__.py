"""A thin gRPC client for the served ArmoRM ensemble (tritonclient underneath)."""

from armorm.result import ArmoRMScore
from armorm_client.client import (
    ArmoRMClient,
    ArmoRMError,
    AsyncArmoRMClient,
    InvalidConversationError,
    ServerError,
    ServerUnavailableError,
)

__all__ = [
    "ArmoRMClient",
    "ArmoRMError",
    "ArmoRMScore",
    "AsyncArmoRMClient",
    "InvalidConversationError",
    "ServerError",
    "ServerUnavailableError",
]
