"""Which API each gRPC method and HTTP path belongs to, and who may call it.

Pure: no sockets, no event loop. The gateway asks `api_of_*` for a request's API (None: not an API this
server offers, answered NOT_FOUND/UNIMPLEMENTED without reaching Triton) and `AccessPolicy.check` whether the
caller's headers open it.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from armorm_client.contract import ADMIN_HEADER, API_KEY_HEADER, ENSEMBLES, GRPC_HEADER_PREFIX, MANIFEST


class Api(enum.Enum):
    HEALTH = "health"
    METADATA = "metadata"
    MODEL_CONFIG = "model-config"
    STATISTICS = "statistics"
    INFERENCE = "inference"
    MODEL_REPOSITORY = "model-repository"
    SHARED_MEMORY = "shared-memory"
    TRACE = "trace"
    LOGGING = "logging"


# Closed unless the caller sends the admin key. Inference, health and the read-only metadata, model-config and
# statistics stay open: perf_analyzer needs the last three and cannot send gRPC headers.
ADMIN_APIS = frozenset({Api.MODEL_REPOSITORY, Api.SHARED_MEMORY, Api.TRACE, Api.LOGGING})
# Public inference reaches the ensemble only. Its steps are not an API: they trust what the tokenizer checked,
# so only holders of the admin key may call them directly (debugging), unchecked.
PUBLIC_MODELS = frozenset(spec.name for spec in ENSEMBLES)  # armorm (messages), armorm_text


def public_models_of(repository: Path) -> frozenset[str]:
    """The public ensembles an exported repository lists (contract.MANIFEST); ArmoRM's two for a repository
    exported before the manifest."""
    manifest = repository / MANIFEST
    if not manifest.is_file():
        return PUBLIC_MODELS
    return frozenset(json.loads(manifest.read_text())["models"])


def reward_models_of(repository: Path) -> dict[str, tuple[str, ...]]:
    """The repository's reward models besides ArmoRM that take messages (contract.MANIFEST): a mixture's members in
    order, () for a Bradley–Terry model. Each NAME has its NAME_text for templated text."""
    manifest = repository / MANIFEST
    models = json.loads(manifest.read_text())["models"] if manifest.is_file() else {}
    return {name: tuple(entry.get("members", ())) for name, entry in models.items()
            if entry.get("kind") in ("mixture", "bradley_terry") and not name.endswith("_text")}

GRPC_SERVICE = "/inference.GRPCInferenceService/"
GRPC_STREAM_INFER = GRPC_SERVICE + "ModelStreamInfer"
GRPC_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_GRPC_METHODS = {
    "ServerLive": Api.HEALTH, "ServerReady": Api.HEALTH, "ModelReady": Api.HEALTH,
    "ServerMetadata": Api.METADATA, "ModelMetadata": Api.METADATA,
    "ModelConfig": Api.MODEL_CONFIG, "ModelStatistics": Api.STATISTICS,
    "ModelInfer": Api.INFERENCE, "ModelStreamInfer": Api.INFERENCE,
    "RepositoryIndex": Api.MODEL_REPOSITORY, "RepositoryModelLoad": Api.MODEL_REPOSITORY,
    "RepositoryModelUnload": Api.MODEL_REPOSITORY,
    "SystemSharedMemoryStatus": Api.SHARED_MEMORY, "SystemSharedMemoryRegister": Api.SHARED_MEMORY,
    "SystemSharedMemoryUnregister": Api.SHARED_MEMORY, "CudaSharedMemoryStatus": Api.SHARED_MEMORY,
    "CudaSharedMemoryRegister": Api.SHARED_MEMORY, "CudaSharedMemoryUnregister": Api.SHARED_MEMORY,
    "TraceSetting": Api.TRACE, "LogSettings": Api.LOGGING,
}


def api_of_grpc(method: str) -> Api | None:
    """`method` as gRPC names it, e.g. /inference.GRPCInferenceService/ModelInfer."""
    if method == GRPC_HEALTH_CHECK:
        return Api.HEALTH
    if not method.startswith(GRPC_SERVICE):
        return None
    return _GRPC_METHODS.get(method[len(GRPC_SERVICE):])


_MODEL = r"/v2/models/[^/]+(?:/versions/[^/]+)?"
_HTTP_ROUTES: tuple[tuple[str, re.Pattern[str], Api], ...] = tuple(
    (method, re.compile(pattern), api) for method, pattern, api in (
        # First: /v2/models/stats is every model's statistics, not the metadata of a model named "stats".
        ("GET", r"/v2/models(?:/[^/]+(?:/versions/[^/]+)?)?/stats", Api.STATISTICS),
        ("GET", r"/v2/health/(?:live|ready)", Api.HEALTH),
        ("GET", _MODEL + r"/ready", Api.HEALTH),
        ("GET", r"/v2", Api.METADATA),
        ("GET", _MODEL, Api.METADATA),
        ("GET", _MODEL + r"/config", Api.MODEL_CONFIG),
        ("POST", _MODEL + r"/infer", Api.INFERENCE),
        ("POST", r"/get_reward", Api.INFERENCE),  # OpenRLHF's remote reward protocol (reward_api.py)
        ("POST", r"/reward", Api.INFERENCE),  # slime's remote_rm, one sample per call (reward_api.py)
        ("POST", r"/v2/repository/index", Api.MODEL_REPOSITORY),
        ("POST", r"/v2/repository/models/[^/]+/(?:load|unload)", Api.MODEL_REPOSITORY),
        ("GET", r"/v2/(?:system|cuda)sharedmemory(?:/region/[^/]+)?/status", Api.SHARED_MEMORY),
        ("POST", r"/v2/(?:system|cuda)sharedmemory(?:/region/[^/]+)?/(?:register|unregister)", Api.SHARED_MEMORY),
        ("*", r"/v2(?:/models/[^/]+)?/trace/setting", Api.TRACE),
        ("*", r"/v2/logging", Api.LOGGING),
    )
)


_HTTP_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/[^/]+)?/infer")


def model_of_http_infer(path: str) -> str:
    """The model an inference path names ("" for a path that is not one)."""
    match = _HTTP_INFER.fullmatch(path)
    return match.group(1) if match else ""


def api_of_http(method: str, path: str) -> Api | None:
    """The API a method and path (no query string) belong to; None for anything Triton's HTTP API lacks."""
    for allowed, pattern, api in _HTTP_ROUTES:
        if (allowed == "*" or allowed == method) and pattern.fullmatch(path):
            return api
    return None


@dataclass(frozen=True)
class Denial:
    """Why a call is refused: `missing` True for no key at all (UNAUTHENTICATED / 401), False for a wrong one
    (PERMISSION_DENIED / 403)."""

    message: str
    missing: bool


@dataclass(frozen=True)
class AccessPolicy:
    """Admin APIs need `admin_key` (None: closed to everyone); inference needs `api_key` when one is set.

    Keys are compared in constant time. Header names are contract.ADMIN_HEADER / API_KEY_HEADER; gRPC callers
    may also send them with Triton's `triton-grpc-protocol-` prefix, as tritonclient users did before.
    """

    admin_key: str | None = None
    api_key: str | None = None
    # The repository's public ensembles (its contract.MANIFEST; ArmoRM's two without one).
    public_models: frozenset[str] = PUBLIC_MODELS

    def check(self, api: Api, header: Callable[[str], str | None]) -> Denial | None:
        if api in ADMIN_APIS:
            if self.admin_key is None:
                return Denial(f"the {api.value} API is closed on this server (armorm-serve opens it to holders of "
                              f"the {ADMIN_HEADER} header when started with ARMORM_ADMIN_KEY)", False)
            return self._require(self.admin_key, ADMIN_HEADER, api, header)
        if api is Api.INFERENCE and self.api_key:
            return self._require(self.api_key, API_KEY_HEADER, api, header)
        return None

    def check_model(self, model: str, header: Callable[[str], str | None]) -> str | None:
        """Why this caller may not run inference on `model` (None: it may): public_models are open to every caller
        that passed `check(Api.INFERENCE, ...)`, any other model only to holders of the admin key."""
        if model in self.public_models:
            return None
        if self.admin_key is not None and self._require(self.admin_key, ADMIN_HEADER, Api.INFERENCE, header) is None:
            return None
        return (f"model {model[:64]!r} is not served for inference here; send requests to "
                f"{', '.join(map(repr, sorted(self.public_models)))}: the other models are their internal steps")

    @staticmethod
    def _require(key: str, name: str, api: Api, header: Callable[[str], str | None]) -> Denial | None:
        hint = " (ArmoRMClient: api_key=...)" if name == API_KEY_HEADER else ""
        presented = header(name)
        if presented is None:
            presented = header(GRPC_HEADER_PREFIX + name)
        if presented is None and name == API_KEY_HEADER:
            presented = authorization_key(header("authorization"))
        if presented is None:
            return Denial(f"the {api.value} API needs the {name} header{hint}", True)
        # surrogateescape: a header that is not UTF-8 reaches here with escaped bytes; it is a wrong key, not a crash
        if not hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), key.encode()):
            return Denial(f"wrong {name} for the {api.value} API", False)
        return None


def authorization_key(value: str | None) -> str | None:
    """The API key in an Authorization header: `Bearer KEY`, or Basic with KEY as the password, which is what
    `requests` sends for a URL like http://rm:KEY@host:8000/get_reward (trainers that send no headers of their
    own, OpenRLHF among them, can still carry a key)."""
    scheme, _, credentials = (value or "").strip().partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials.strip()
    if scheme.lower() == "basic" and credentials:
        try:
            return base64.b64decode(credentials.strip(), validate=True).decode("utf-8").partition(":")[2] or None
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


# Never forwarded to Triton: the keys stay in the gateway, the transport's own headers are the proxy's business.
_KEY_HEADERS = frozenset({ADMIN_HEADER, API_KEY_HEADER, GRPC_HEADER_PREFIX + ADMIN_HEADER,
                          GRPC_HEADER_PREFIX + API_KEY_HEADER, "authorization"})


def forwarded_grpc_metadata(metadata: tuple[tuple[str, str | bytes], ...]) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((key, value) for key, value in metadata
                 if key not in _KEY_HEADERS and not key.startswith((":", "grpc-")) and key not in ("user-agent", "te"))


# Triton 2.51 answers these transient states with INTERNAL or NOT_FOUND; the gateway passes them on as UNAVAILABLE
# so that clients decide retries by status code alone.
_TRANSIENT = (
    "is not healthy",  # a model process died; the supervisor restarts the server
    "has no available versions",  # the models are unloading: a restart or a shutdown
)


def transient_failure(details: str) -> bool:
    return any(marker in details for marker in _TRANSIENT)
