"""The same served ensemble with the backbone on the ONNX Runtime runtime (right-padded groups)."""

import pytest

from armorm.launcher.serve_process import ServeProcess
from armorm_client import ArmoRMClient, contract
from armorm_export.repository import set_parameter
from tests.conversations import varied_conversations
from tests.repositories import derive
from tests.test_server import assert_same

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def onnx_client(exported_repository, tmp_path_factory):
    def edit(name, config):
        if name == contract.BACKBONE.name:
            set_parameter(config, "runtime", "onnxruntime")
            set_parameter(config, "max_batch_tokens", "2048")  # several padded groups per batch

    repository = derive(exported_repository, tmp_path_factory.mktemp("onnx") / "repository", edit)
    with ServeProcess(repository, repository.parent / "logs") as server:
        with ArmoRMClient(server.grpc_url) as client:
            yield client


def test_onnxruntime_backbone_serves_the_same_scores(onnx_client, reference):
    conversations = varied_conversations()
    results = onnx_client.score_batch(conversations, max_in_flight=len(conversations))
    for index, (messages, result) in enumerate(zip(conversations, results)):
        assert_same(result, reference.score(messages), f"onnxruntime conversation {index}")
