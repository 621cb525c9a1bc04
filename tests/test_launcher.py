"""The serving launcher: ready on start, nothing left behind on stop, fast failure with the log tail."""

import os

import pytest

from armorm.server import ServerStartError, TritonServer, shm_segments

pytestmark = pytest.mark.integration


def test_stop_leaves_no_processes_or_shared_memory(exported_repository, tmp_path):
    server = TritonServer(exported_repository, log_path=tmp_path / "server.log").start()
    group = server.process.pid
    assert shm_segments(server.shm_prefix), "the Python backend should hold its own shared memory while serving"
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
    assert not shm_segments(server.shm_prefix)


def test_a_broken_repository_fails_fast_with_the_log(tmp_path):
    broken = tmp_path / "repository" / "armorm"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text("this is { not a model config")
    with pytest.raises(ServerStartError, match="log tail"):
        TritonServer(tmp_path / "repository", log_path=tmp_path / "server.log", startup_timeout=60).start()
