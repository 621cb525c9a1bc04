"""The client installs light: `pip install ./client` into a fresh virtual environment (numpy and tritonclient, no
torch, no server package) and scores against the live server exactly as the reference does."""

import json
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from tests.conversations import varied_conversations
from tests.test_server import SCORE_ATOL

pytestmark = pytest.mark.integration
CLIENT = Path(__file__).resolve().parent.parent / "client"

SCRIPT = """
import json, sys
from armorm_client import ArmoRMClient
import armorm_client.slime, armorm_client.trl, armorm_client.verl  # the trainer integrations import light too
conversations = json.loads(sys.stdin.read())
with ArmoRMClient(sys.argv[1]) as client:
    results = client.score_batch(conversations)
print(json.dumps({"scores": [r.score for r in results],
                  "modules": sorted(m for m in ("torch", "transformers", "armorm", "trl", "verl")
                                    if m in sys.modules)}))
"""


def test_a_client_only_environment_scores_against_the_server(server, reference, tmp_path):
    environment = tmp_path / "client-venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    source = shutil.copytree(CLIENT, tmp_path / "client", ignore=shutil.ignore_patterns("__pycache__", "build",
                                                                                      "*.egg-info"))
    # From a copy: pip builds a local project in place, and the test must not write into the source tree.
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(source)], check=True, timeout=600)
    installed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], check=True, capture_output=True,
                               text=True).stdout
    names = {package["name"].lower() for package in json.loads(installed)}
    assert "armorm-client" in names and not names & {"torch", "transformers", "nvidia-pytriton", "armorm-triton"}
    conversations = varied_conversations()[:4]
    done = subprocess.run([str(python), "-c", SCRIPT, server.grpc_url], input=json.dumps(conversations),
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["modules"] == []
    for served, messages in zip(answer["scores"], conversations, strict=True):
        assert abs(served - reference.score(messages).score) <= SCORE_ATOL
