"""A thin gRPC client for the served ArmoRM ensemble (tritonclient underneath)."""

from armorm_client.client import (
    ArmoRMClient,
    ArmoRMError,
    AsyncArmoRMClient,
    DeadlineExceededError,
    InvalidConversationError,
    PermissionDeniedError,
    RetriesExhaustedError,
    ServerError,
    ServerUnavailableError,
    TemplatedText,
)
from armorm_client.result import ArmoRMScore
from armorm_client.retry import NO_RETRIES, RetryPolicy

__all__ = [
    "NO_RETRIES",
    "ArmoRMClient",
    "DeadlineExceededError",
    "PermissionDeniedError",
    "RetriesExhaustedError",
    "RetryPolicy",
    "TemplatedText",
    "ArmoRMError",
    "ArmoRMScore",
    "AsyncArmoRMClient",
    "InvalidConversationError",
    "ServerError",
    "ServerUnavailableError",
]
