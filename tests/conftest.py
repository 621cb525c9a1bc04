"""Session fixtures: the random checkpoint, its exported repository, the in-process reference and
one live `armorm-serve` on loopback (gateway + tritonserver; started once, stopped at the end with nothing
left behind), and one more on a derived repository for the non-default serving options."""

from __future__ import annotations

from pathlib import Path

import pytest

from armorm.testing.random_checkpoint import write_random_checkpoint
from tests.conversations import TEST_MAX_TOKENS


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("checkpoint") / "tiny-armorm", seed=1234)


@pytest.fixture(scope="session")
def reference(tiny_checkpoint: Path):
    from armorm.reference import ArmoRMReference

    return ArmoRMReference(tiny_checkpoint)


@pytest.fixture(scope="session")
def tokenizer(tiny_checkpoint: Path):
    """The checkpoint's own Hugging Face tokenizer: what trainers template their queries with."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_checkpoint))


@pytest.fixture(scope="session")
def exported_repository(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from armorm_export.repository import ExportOptions, export_repository

    output = tmp_path_factory.mktemp("repository") / "repository"
    return export_repository(tiny_checkpoint, output, ExportOptions(max_tokens=TEST_MAX_TOKENS))


@pytest.fixture(scope="session")
def server(exported_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    from armorm.testing.serve_process import ServeProcess

    with ServeProcess(exported_repository, tmp_path_factory.mktemp("server"), admin_key="test-admin-key") as running:
        yield running


@pytest.fixture(scope="session")
def variant_server(exported_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """armorm-serve on a derived repository with the two non-default options whose tests can share a server (one
    start instead of two): the backbone on ONNX Runtime in padded groups (tests/test_server_onnxruntime.py) and
    opt-in truncation in the tokenizer (tests/test_truncation.py). They do not meet: truncation happens before the
    backbone sees a token, and the ONNX Runtime test sends only conversations under the limit."""
    from armorm.testing.serve_process import ServeProcess
    from armorm_client import contract
    from armorm_export.repository import set_parameter
    from tests.repositories import derive

    def edit(name, config):
        if name == contract.BACKBONE.name:
            set_parameter(config, "runtime", "onnxruntime")
            set_parameter(config, "max_batch_tokens", "2048")  # several padded groups per batch
        if name == contract.TOKENIZER.name:
            assert config.parameters["truncate"].string_value == "false", "the export's default refuses long ones"
            set_parameter(config, "truncate", "true")  # what armorm-export --truncate writes

    directory = tmp_path_factory.mktemp("variant")
    with ServeProcess(derive(exported_repository, directory / "repository", edit), directory / "logs") as running:
        yield running


@pytest.fixture(scope="session")
def client(server):
    from armorm_client import ArmoRMClient

    with ArmoRMClient(server.grpc_url) as connected:
        yield connected
