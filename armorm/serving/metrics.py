"""Custom Prometheus metrics from the Python models, exported on Triton's /metrics endpoint.

`pb` is the Triton stub module (or a test fake); a model creates its families once in initialize().
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from armorm.model.batching import BackboneStats

# Names, declared once; tests and docs/operations.md refer to these.
CONVERSATIONS = "armorm_conversations_total"
TOKENS = "armorm_tokens_total"
REJECTED = "armorm_rejected_requests_total"
TRUNCATED = "armorm_truncated_conversations_total"
BACKBONE_EXECUTIONS = "armorm_backbone_executions_total"
BACKBONE_CONVERSATIONS = "armorm_backbone_conversations_total"
BACKBONE_FORWARDS = "armorm_backbone_forward_passes_total"
BACKBONE_TOKENS = "armorm_backbone_tokens_total"
BACKBONE_COMPUTED = "armorm_backbone_computed_tokens_total"
BACKBONE_SAVED = "armorm_backbone_saved_tokens_total"
BACKBONE_PADDING = "armorm_backbone_padding_tokens_total"
# Requests through the pipeline: admitted − completed − aborted is what is inside the models.
ADMITTED = "armorm_requests_admitted_total"
COMPLETED = "armorm_requests_completed_total"
ABORTED = "armorm_requests_aborted_total"


class Counter:
    """A counter family whose labelled series are created on first use."""

    def __init__(self, pb: Any, name: str, description: str) -> None:
        self._family = pb.MetricFamily(name=name, description=description, kind=pb.MetricFamily.COUNTER)
        self._series: dict[tuple[tuple[str, str], ...], Any] = {}

    def add(self, value: float, **labels: str) -> None:
        if value <= 0:
            return
        key = tuple(sorted(labels.items()))
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self._family.Metric(labels=dict(key))
        series.increment(float(value))


class TokenizerMetrics:
    def __init__(self, pb: Any) -> None:
        self.admitted = Counter(pb, ADMITTED, "Requests passed on into the pipeline (valid)")
        self.conversations = Counter(pb, CONVERSATIONS, "Conversations accepted for scoring")
        self.tokens = Counter(pb, TOKENS, "Tokens in accepted conversations (chat template applied)")
        self.rejected = Counter(pb, REJECTED, "Requests rejected with INVALID_ARGUMENT, by reason")
        self.truncated = Counter(pb, TRUNCATED, "Conversations cut to max_tokens before scoring (truncate=true)")


class AbortedRequests:
    """Error responses a later step sends for admitted requests, labelled by model (server faults: alert)."""

    def __init__(self, pb: Any, model: str) -> None:
        self._counter = Counter(pb, ABORTED, "Admitted requests that a later step answered with an error")
        self._model = model
        self._invalid = pb.TritonError.INVALID_ARG

    def count(self, responses: Any) -> None:
        # INVALID_ARGUMENT only answers direct callers: the ensemble never sends a malformed request.
        failed = sum(1 for r in responses if r.has_error() and r.error().code() != self._invalid)
        self._counter.add(failed, model=self._model)


class BackboneMetrics:
    def __init__(self, pb: Any) -> None:
        self.executions = Counter(pb, BACKBONE_EXECUTIONS, "Backbone execute() calls")
        self.conversations = Counter(pb, BACKBONE_CONVERSATIONS, "Conversations through the backbone")
        self.forwards = Counter(pb, BACKBONE_FORWARDS, "Forward passes (a batch over the token budget takes several)")
        self.tokens = Counter(pb, BACKBONE_TOKENS, "Conversation tokens entering the backbone")
        self.computed = Counter(pb, BACKBONE_COMPUTED, "Token positions actually computed (incl. padding)")
        self.saved = Counter(pb, BACKBONE_SAVED, "Tokens not recomputed because a prompt was shared")
        self.padding = Counter(pb, BACKBONE_PADDING, "Padding tokens computed (onnxruntime runtime)")

    def record(self, stats: BackboneStats) -> None:
        self.executions.add(1)
        self.conversations.add(stats.conversations)
        self.forwards.add(stats.forwards)
        self.tokens.add(stats.tokens)
        self.computed.add(stats.computed_tokens)
        self.saved.add(stats.saved_tokens)
        self.padding.add(stats.padding_tokens)
