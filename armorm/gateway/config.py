"""What a gateway starts with: public ports, limits, keys, TLS files (loaded once, by `LoadedTls.load`) and where
tritonserver listens. The bottom of the gateway's modules: it imports none of them but routes.py and http_body.py
(for the default of one conversation's size)."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from armorm.gateway.http_body import DEFAULT_MAX_CONVERSATION_BYTES
from armorm.gateway.routes import AccessPolicy

# The ensemble takes at most 64 conversations of at most 1 MiB each per request (tokenizer max_bytes).
DEFAULT_MAX_REQUEST_BYTES = 65 << 20
# Beyond this many inference calls inside Triton, new ones are refused UNAVAILABLE (retryable) at once.
DEFAULT_MAX_IN_FLIGHT = 4096
# Keep-alive connections to Triton's HTTP socket; more concurrent HTTP calls wait for one to come free.
DEFAULT_HTTP_UPSTREAM_CONNECTIONS = 64
# Request bytes held at once across both listeners (bodies read, messages received, until Triton answers): 1 GiB,
# 1/16 of the chart's 16 Gi pod. A request that would go over it is refused at once (503 / UNAVAILABLE: retryable).
DEFAULT_MAX_BUFFERED_BYTES = 1 << 30


class GatewayStartError(RuntimeError):
    pass


class ListenError(OSError):
    """A public port could not be bound (held by another process, or not an address of this host)."""


class PortTakenError(GatewayStartError):
    """The gateway could not bind one of its ports: the one start failure worth retrying on other ports."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for TLS on the gRPC and HTTP ports; with client_ca set, clients must present a certificate it
    signed (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class LoadedTls:
    """TlsFiles read once, as each listener takes them: gRPC credentials and an SSL context for HTTPS."""

    grpc_credentials: grpc.ServerCredentials
    ssl_context: ssl.SSLContext

    @classmethod
    def load(cls, files: TlsFiles) -> LoadedTls:
        """Raises OSError (unreadable) or ssl.SSLError (a key that does not match its certificate, not PEM)."""
        cert, key = files.cert.read_bytes(), files.key.read_bytes()
        client_ca = files.client_ca.read_bytes() if files.client_ca else None
        credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                                  require_client_auth=client_ca is not None)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(files.cert, files.key)  # the ssl module reads PEM chains from files only
        if client_ca is not None:
            context.load_verify_locations(cadata=client_ca.decode("ascii"))
            context.verify_mode = ssl.CERT_REQUIRED
        return cls(credentials, context)


@dataclass(frozen=True)
class Upstream:
    """Where tritonserver listens: a gRPC target and the Unix sockets of its HTTP and metrics frontends."""

    grpc_target: str  # e.g. unix:/run/armorm/grpc.sock:0
    http_socket: Path
    metrics_socket: Path


@dataclass(frozen=True)
class ConnectionLimits:
    """How long and how many: what sheds slow or piled-up clients. Defaults follow nginx and Envoy's edge
    settings (docs/operations.md, "Limits", gives each with its source); 0 turns a limit off."""

    header_timeout_s: float = 20.0  # a request's headers must be complete this long after its first byte
    body_idle_timeout_s: float = 60.0  # nginx client_body_timeout: no body byte for this long ends the request
    min_body_rate: float = 500.0  # bytes/s averaged over a body, checked once it has taken body_rate_grace_s
    body_rate_grace_s: float = 10.0
    keepalive_timeout_s: float = 75.0  # nginx keepalive_timeout: an idle HTTP connection closes
    max_connections: int = 10000  # open connections per listener (Envoy's edge example: 10000 per listener)
    max_connections_per_address: int = 1000  # per client IP address on each HTTP listener
    grpc_max_concurrent_streams: int = 100  # Envoy's edge value for HTTP/2
    grpc_max_connection_idle_s: float = 3600.0  # Envoy's edge idle_timeout: a gRPC connection without calls
    grpc_min_ping_interval_s: float = 10.0  # clients pinging more often are sent GOAWAY (keep-alive enforcement)


@dataclass(frozen=True)
class GatewayConfig:
    upstream: Upstream
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    policy: AccessPolicy = AccessPolicy()
    tls: TlsFiles | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    # A gRPC connection older than this is asked to reconnect (GOAWAY once its calls end): a client behind a
    # Kubernetes Service then re-resolves and reaches new replicas. None: connections live forever.
    max_connection_age_s: float | None = None
    http_upstream_connections: int = DEFAULT_HTTP_UPSTREAM_CONNECTIONS
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES
    limits: ConnectionLimits = ConnectionLimits()
    # One conversation's bytes at most (the tokenizer's max_bytes): longer strings are refused before Triton.
    max_conversation_bytes: int = DEFAULT_MAX_CONVERSATION_BYTES
    # /get_reward: the reward a refused query (INVALID_ARGUMENT) gets instead of failing the call, with
    # extra_logs["refused"] = 1. None (the default): a refused query fails the call with its reason.
    refused_reward: float | None = None
    # The repository's other reward models (contract.MANIFEST), /get_reward?model=NAME: a mixture's members in
    # order, () for a Bradley–Terry model.
    reward_models: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
