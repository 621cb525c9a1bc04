"""Session fixtures: the random checkpoint, its exported repository, the in-process reference and
one live `armorm-serve` on loopback (gateway + tritonserver; started once, stopped at the end with nothing
left behind)."""

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
def exported_repository(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from armorm_export.repository import ExportOptions, export_repository

    output = tmp_path_factory.mktemp("repository") / "repository"
    return export_repository(tiny_checkpoint, output, ExportOptions(max_tokens=TEST_MAX_TOKENS))


@pytest.fixture(scope="session")
def server(exported_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    from armorm.launcher.serve_process import ServeProcess

    with ServeProcess(exported_repository, tmp_path_factory.mktemp("server"), admin_key="test-admin-key") as running:
        yield running


@pytest.fixture(scope="session")
def client(server):
    from armorm_client import ArmoRMClient

    with ArmoRMClient(server.grpc_url) as connected:
        yield connected
