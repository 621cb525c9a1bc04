"""Graceful drain: finish every admitted request before Triton stops.

Triton's own SIGTERM handling stops each model's scheduler at once, so an ensemble request that has
passed the tokenizer is refused ("Server is stopping ...") when it reaches the backbone or a head.
The launcher therefore drains first: it creates the flag file named by DRAIN_FLAG_ENV; from then on
the tokenizer (the pipeline's entry) answers new requests UNAVAILABLE, while the later steps keep
accepting. Requests still inside the pipeline are counted from the models' own metrics:
admitted (tokenizer) − completed (transform) − aborted (an error response after admission).
When that reaches zero, or the drain times out, the launcher sends Triton its SIGTERM.
"""

from __future__ import annotations

import os
from pathlib import Path

from armorm import metrics
from armorm.contract import STEPS, TOKENIZER
from armorm.prometheus import Samples, total

# The launcher passes the flag path to every model process through this environment variable.
DRAIN_FLAG_ENV = "ARMORM_DRAIN_FLAG"
DRAINING_MESSAGE = "the server is shutting down and accepts no new requests; retry on another replica"

def draining(environ: dict[str, str] | None = None) -> bool:
    """True once the launcher asked this server to drain (a stat per batch; no flag configured: never)."""
    flag = (os.environ if environ is None else environ).get(DRAIN_FLAG_ENV)
    return bool(flag) and Path(flag).exists()


# Steps after the tokenizer: Triton itself fails their sub-requests when a queue rejects or times out.
LATER_STEPS = frozenset(step.name for step in STEPS if step.name != TOKENIZER.name)
TRITON_FAILURES = "nv_inference_request_failure"


def requests_in_pipeline(samples: Samples) -> float:
    """Admitted requests that have neither completed nor failed, from one /metrics scrape.

    Failures come from the models (error responses, counted by them) and from Triton (queue rejections
    and cancellations of later steps; its BACKEND reason is the models' own errors, already counted).
    An estimate, never a hang: both heads failing one request counts it twice, and calling a later step
    directly (not through the ensemble) counts a completion that was never admitted; either only makes
    the drain end sooner.
    """
    rejected_by_triton = sum(value for labels, value in samples.get(TRITON_FAILURES, [])
                             if labels.get("model") in LATER_STEPS and labels.get("reason") != "BACKEND")
    finished = total(samples, metrics.COMPLETED) + total(samples, metrics.ABORTED)
    return total(samples, metrics.ADMITTED) - finished - rejected_by_triton
