"""Opt-in truncation (tokenizer parameter truncate="true", armorm-export --truncate), against a real server:
a long conversation is scored on its first max_tokens tokens exactly as the model card's pipeline scores it
(truncation=True, max_length), the metric counts it, and a prompt longer than the limit is still refused."""

import pytest

from armorm.serving.metrics import TRUNCATED
from armorm.testing.prometheus import scrape, total
from armorm_client import ArmoRMClient, InvalidConversationError
from tests.conversations import TEST_MAX_TOKENS, varied_conversations
from tests.test_server import assert_same

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def truncating_server(variant_server):
    """truncate="true" in the tokenizer's config, as armorm-export --truncate writes it (conftest.py)."""
    return variant_server


def long_conversation(prompt: str = "Write a long story.") -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": "once upon a time " * 600}]


def test_a_long_conversation_is_scored_like_the_card_pipeline_truncates_it(truncating_server, reference, client):
    conversation = long_conversation()
    with pytest.raises(InvalidConversationError, match="tokens long; the limit is"):
        client.score(conversation)  # the default server refuses it
    before = total(scrape(truncating_server.metrics_url), TRUNCATED)
    with ArmoRMClient(truncating_server.grpc_url) as truncating:
        served = truncating.score(conversation)
        short = varied_conversations()[0]
        assert_same(truncating.score(short), reference.score(short), "a short conversation, unchanged")
    assert served.num_tokens == TEST_MAX_TOKENS, "num_tokens tells what was scored"
    assert_same(served, reference.score(conversation, max_length=TEST_MAX_TOKENS), "truncated as the card does")
    assert total(scrape(truncating_server.metrics_url), TRUNCATED) == before + 1


def test_a_prompt_over_the_limit_is_still_refused(truncating_server):
    with ArmoRMClient(truncating_server.grpc_url) as truncating:
        with pytest.raises(InvalidConversationError,
                           match=r"the prompt ends at token \d+ \(its last assistant header\), past the limit"):
            truncating.score(long_conversation("tell me " * 1500))
        assert truncating.score(varied_conversations()[1]).num_tokens > 0
