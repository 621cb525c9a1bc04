"""The same served ensemble with the backbone on the ONNX Runtime runtime (right-padded groups)."""

import pytest

from armorm_client import ArmoRMClient
from tests.conversations import varied_conversations
from tests.test_server import assert_same

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def onnx_client(variant_server):
    """The backbone on ONNX Runtime with max_batch_tokens 2048: several padded groups per batch (conftest.py)."""
    with ArmoRMClient(variant_server.grpc_url) as client:
        yield client


def test_onnxruntime_backbone_serves_the_same_scores(onnx_client, reference):
    conversations = varied_conversations()
    results = onnx_client.score_batch(conversations, max_in_flight=len(conversations))
    for index, (messages, result) in enumerate(zip(conversations, results, strict=True)):
        assert_same(result, reference.score(messages), f"onnxruntime conversation {index}")
