"""Client retry policy and error classification, without a server."""

import random

import pytest
from tritonclient.utils import InferenceServerException

from armorm_client.client import (
    DeadlineExceededError,
    InvalidConversationError,
    PermissionDeniedError,
    RetriesExhaustedError,
    ServerError,
    ServerUnavailableError,
    exhausted,
    to_error,
)
from armorm_client.retry import NO_RETRIES, RetryPolicy, call_with_retries


def failing(errors):
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "ok"

    return call, calls


def test_unavailable_is_retried_until_success():
    call, calls = failing([ServerUnavailableError("busy")] * 3)
    sleeps = []
    policy = RetryPolicy(max_attempts=5)
    assert call_with_retries(call, policy, ServerUnavailableError, exhausted, sleeps.append) == "ok"
    assert len(calls) == 4 and len(sleeps) == 3


def test_invalid_argument_is_never_retried():
    call, calls = failing([InvalidConversationError("bad")])
    with pytest.raises(InvalidConversationError):
        call_with_retries(call, RetryPolicy(max_attempts=5), ServerUnavailableError, exhausted, lambda s: None)
    assert len(calls) == 1


def test_a_clear_error_when_retries_run_out():
    call, calls = failing([ServerUnavailableError("busy")] * 10)
    with pytest.raises(RetriesExhaustedError, match="after 3 attempts"):
        call_with_retries(call, RetryPolicy(max_attempts=3), ServerUnavailableError, exhausted, lambda s: None)
    assert len(calls) == 3


def test_backoff_grows_exponentially_with_full_jitter_and_a_cap():
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0, multiplier=2.0)
    rng = random.Random(0)
    for attempt, cap in ((1, 0.1), (2, 0.2), (3, 0.4), (6, 1.0)):
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= cap
        assert max(delays) > 0.8 * cap


@pytest.mark.parametrize(("status", "message", "kind"), [
    ("StatusCode.INVALID_ARGUMENT", "messages is not valid JSON", InvalidConversationError),
    ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", ServerUnavailableError),
    ("StatusCode.UNAVAILABLE", "Stub process 'armorm_backbone_0_0' is not healthy.", ServerUnavailableError),
    ("StatusCode.INTERNAL", "anything at all", ServerError),
    ("StatusCode.UNAUTHENTICATED", "the inference API needs the armorm-api-key header", PermissionDeniedError),
    ("StatusCode.PERMISSION_DENIED", "wrong armorm-api-key", PermissionDeniedError),
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", DeadlineExceededError),
])
def test_errors_are_classified_by_status_code_alone(status, message, kind):
    assert type(to_error(InferenceServerException(message, status=status))) is kind


def test_one_rule_decides_when_to_stop():
    policy = RetryPolicy(max_attempts=3)
    assert policy.after(1, retryable=True) is not None and policy.after(2, retryable=True) is not None
    assert policy.after(3, retryable=True) is None
    assert policy.after(1, retryable=False) is None


def test_without_retries_the_error_is_the_servers_own():
    call, calls = failing([ServerUnavailableError("busy")])
    with pytest.raises(ServerUnavailableError, match="^busy$") as raised:
        call_with_retries(call, NO_RETRIES, ServerUnavailableError, exhausted, lambda s: None)
    assert type(raised.value) is ServerUnavailableError and len(calls) == 1
