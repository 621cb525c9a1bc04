"""Bradley–Terry reward models beside ArmoRM in one repository (armorm.model.bradley_terry, export/bradley_terry.py).

Random checkpoints in each exact on-disk format: FsfairX-LLaMA3-RM's (Llama-3, RLHFlow's tokenizer that adds no
BOS) and Skywork-Reward-V2-Llama-3.1-8B's (Llama-3.1 RoPE scaling, a BOS-adding tokenizer, Llama-3.1's template).
Both are exported under their own names next to ArmoRM and served by one live armorm-serve. Each score is checked
against transformers' own LlamaForSequenceClassification, fed the way its authors' code feeds it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from armorm.testing.random_checkpoint import write_random_bradley_terry
from armorm.testing.serve_process import ServeProcess
from armorm_client import contract
from armorm_export.mixture import main as mixture_main
from tests.conversations import TEST_MAX_TOKENS, varied_conversations

pytestmark = pytest.mark.integration

ATOL = 1e-4  # fp32 served path against transformers' fp32 forward
SKYWORK_STATS = (0.1, 2.0)  # mean, std: the mixture enters skywork standardised
KINDS = {"fsfairx": False, "skywork": True}  # name → Llama-3.1 (Skywork) or Llama-3 (FsfairX)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("bradley-terry")
    return {name: write_random_bradley_terry(root / name, seed=11 + index, llama31=llama31)
            for index, (name, llama31) in enumerate(KINDS.items())}


@pytest.fixture(scope="module")
def repository(checkpoints, tiny_checkpoint, tmp_path_factory):
    from armorm_export.repository import ExportOptions, export_repository

    output = tmp_path_factory.mktemp("mixed") / "repository"
    options = ExportOptions(max_tokens=TEST_MAX_TOKENS, onnx=False)
    export_repository(tiny_checkpoint, output, options)
    for name, directory in checkpoints.items():
        export_repository(directory, output, options, name=name)
    assert mixture_main([str(output), "helpful", "armorm=1", "fsfairx=0.5", "skywork=-0.25",
                         "--standardize", f"skywork={SKYWORK_STATS[0]},{SKYWORK_STATS[1]}"]) == 0
    return output


@pytest.fixture(scope="module")
def mixed_server(repository, tmp_path_factory):
    with ServeProcess(repository, tmp_path_factory.mktemp("mixed-server"), admin_key="bt-admin") as running:
        yield running


def authors_score(directory, messages, llama31: bool) -> float:
    """RLHFlow's pipeline (template text, every BOS text removed, tokenizer defaults, raw logit) or Skywork's README
    (a leading BOS stripped, tokenizer defaults, logits[0][0]), on transformers' own model class."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = AutoModelForSequenceClassification.from_pretrained(str(directory), dtype=torch.float32).eval()
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    if llama31:
        text = text[len(tokenizer.bos_token):] if text.startswith(tokenizer.bos_token) else text
    else:
        text = text.replace(tokenizer.bos_token, "")
    with torch.inference_mode():
        return float(model(**tokenizer(text, return_tensors="pt")).logits[0][0])


def served_scores(server, name: str, conversations, output: str = contract.SCORE.name, **options) -> np.ndarray:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        tensor = grpcclient.InferInput(contract.MESSAGES.name, [len(conversations), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[json.dumps(c).encode()] for c in conversations], dtype=object))
        result = client.infer(name, [tensor], outputs=[grpcclient.InferRequestedOutput(output)], **options)
        return result.as_numpy(output).reshape(len(conversations), -1).squeeze(-1) if output == contract.SCORE.name \
            else result.as_numpy(output)
    finally:
        client.close()


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_bradley_terry_model_scores_as_its_authors_code(mixed_server, checkpoints, name):
    conversations = varied_conversations()[:5]
    expected = np.array([authors_score(checkpoints[name], c, KINDS[name]) for c in conversations])
    alone = np.concatenate([served_scores(mixed_server, name, [c]) for c in conversations])
    together = served_scores(mixed_server, name, conversations)
    assert np.abs(alone - expected).max() <= ATOL, (name, alone, expected)
    assert np.abs(together - alone).max() <= ATOL, "a request's score must not depend on its batch"


def test_armorm_is_served_unchanged_beside_them(mixed_server, reference):
    from armorm_client import ArmoRMClient

    with ArmoRMClient(mixed_server.grpc_url) as client:
        for messages in varied_conversations()[:3]:
            assert abs(client.score(messages).score - reference.score(messages).score) <= ATOL


def test_the_manifest_lists_every_public_model_and_the_gateway_opens_only_those(mixed_server, repository):
    manifest = json.loads((repository / contract.MANIFEST).read_text())["models"]
    members = ["armorm", "fsfairx", "skywork"]
    assert manifest == {"armorm": {"kind": "armorm"}, "armorm_text": {"kind": "armorm"},
                        "fsfairx": {"kind": "bradley_terry"}, "skywork": {"kind": "bradley_terry"},
                        "helpful": {"kind": "mixture", "members": members},
                        "helpful_text": {"kind": "mixture", "members": members}}
    with pytest.raises(InferenceServerException, match="not served for inference here") as refused:
        served_scores(mixed_server, "skywork_score", varied_conversations()[:1])
    assert "NOT_FOUND" in str(refused.value.status())
    with pytest.raises(InferenceServerException, match="the limit is"):  # the gateway's size check applies too
        served_scores(mixed_server, "fsfairx", [[{"role": "user", "content": "x" * (1 << 20)},
                                                 {"role": "assistant", "content": "y"}]])


def test_the_export_names_models_by_kind(checkpoints, tiny_checkpoint, tmp_path):
    from armorm_export.__main__ import main

    assert main([str(checkpoints["fsfairx"]), str(tmp_path / "r")]) == 1, "a Bradley–Terry model needs --name"
    assert main([str(checkpoints["fsfairx"]), str(tmp_path / "r"), "--name", "armorm_bt"]) == 1, "armorm* is ArmoRM's"
    assert main([str(checkpoints["fsfairx"]), str(tmp_path / "r"), "--name", "Bad-Name"]) == 1
    assert main([str(tiny_checkpoint), str(tmp_path / "r"), "--name", "other"]) == 1, "ArmoRM is always armorm"


def test_a_mixture_answers_each_members_score_and_their_weighted_sum_in_one_call(mixed_server):
    conversations = varied_conversations()[:4]
    members = np.stack([served_scores(mixed_server, name, conversations) for name in ("armorm", "fsfairx", "skywork")],
                       axis=1)
    mixed = served_scores(mixed_server, "helpful", conversations, contract.MEMBER_SCORES.name)
    assert np.abs(mixed - members).max() <= ATOL, "each member's score, in the mixture's order"
    standardised = (members[:, 2] - SKYWORK_STATS[0]) / SKYWORK_STATS[1]
    expected = members[:, 0] + 0.5 * members[:, 1] - 0.25 * standardised
    assert np.abs(served_scores(mixed_server, "helpful", conversations) - expected).max() <= ATOL
    own = served_scores(mixed_server, "helpful", conversations, parameters={"weights": "fsfairx=2"})
    assert np.abs(own - 2 * members[:, 1]).max() <= ATOL, "a request's own weights; members it does not name weigh 0"
    with pytest.raises(InferenceServerException, match="not members of this mixture"):
        served_scores(mixed_server, "helpful", conversations, parameters={"weights": "gpt4=1"})
    with pytest.raises(InferenceServerException, match="armorm: .*the limit is"):
        served_scores(mixed_server, "helpful", [[{"role": "user", "content": "word " * (TEST_MAX_TOKENS + 10)},
                                                 {"role": "assistant", "content": "ok"}]])


def test_a_mixture_through_get_reward_takes_openrlhfs_templated_queries(mixed_server, tokenizer):
    import urllib.request

    conversations = varied_conversations()[:3]
    expected = served_scores(mixed_server, "helpful", conversations)
    members = served_scores(mixed_server, "helpful", conversations, contract.MEMBER_SCORES.name)
    document = {"query": [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]}
    for query, weights in (("model=helpful", None), ("model=helpful&weights=fsfairx:2", 2 * members[:, 1])):
        request = urllib.request.Request(f"http://{mixed_server.http_url}/get_reward?{query}",
                                         data=json.dumps(document).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        want = expected if weights is None else weights
        assert np.abs(np.array(answer["rewards"]) - want).max() <= ATOL, query
        for index, member in enumerate(("armorm", "fsfairx", "skywork")):
            assert np.abs(np.array(answer["extra_logs"][member]) - members[:, index]).max() <= ATOL
