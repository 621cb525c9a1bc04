"""Custom and Triton metrics on /metrics match the traffic that was sent."""

import pytest

from armorm.serving import metrics
from armorm.testing.prometheus import parse, scrape, total
from armorm_client import InvalidConversationError
from tests.conversations import varied_conversations


def test_parse_prometheus_text():
    samples = parse('# HELP x y\nx{reason="json",model="m"} 3\nx{reason="schema"} 2\ny 1.5\n')
    assert total(samples, "x") == 5 and total(samples, "x", reason="json") == 3 and total(samples, "y") == 1.5


@pytest.mark.integration
def test_metrics_count_what_was_sent(server, client):
    before = scrape(server.metrics_url)
    good = varied_conversations()[:6]
    results = client.score_batch(good)
    bad = {"json": b"nope", "schema": b"[]", "too_long": None}
    for raw in bad.values():
        payload = raw if raw is not None else [{"role": "user", "content": "word " * 1500},
                                              {"role": "assistant", "content": "x"}]
        with pytest.raises(InvalidConversationError):
            client.score(payload)
    prompt = [{"role": "user", "content": "Shared prompt for the metrics test, long enough to matter."}]
    shared = client.score_responses(prompt, ["One.", "Two.", "Three."])
    after = scrape(server.metrics_url)

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    sent = results + shared
    assert delta(metrics.CONVERSATIONS) == len(sent)
    assert delta(metrics.TOKENS) == sum(r.num_tokens for r in sent)
    for reason in bad:
        assert delta(metrics.REJECTED, reason=reason) == 1, reason
    assert delta(metrics.BACKBONE_CONVERSATIONS) == len(sent)
    assert delta(metrics.BACKBONE_TOKENS) == sum(r.num_tokens for r in sent)
    prompt_tokens = shared[0].num_tokens - 5  # the shared part ends at the gate; at least this much is saved
    assert delta(metrics.BACKBONE_SAVED) >= 2 * (prompt_tokens - 10)
    assert 1 <= delta(metrics.BACKBONE_EXECUTIONS) <= len(sent)
    # Triton's own counters: successes match; 2.51 counts each failed ensemble request twice (reason OTHER)
    # and not at all at the Python model that failed it, hence armorm_rejected_requests_total.
    assert delta("nv_inference_request_success", model="armorm") == len(good) + 1
    assert delta("nv_inference_request_failure", model="armorm") >= len(bad)
