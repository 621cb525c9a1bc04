"""Reward models beside ArmoRM in one repository: Bradley–Terry models (armorm.model.bradley_terry), a mixture of
them (armorm.model.mixture) and a pairwise preference model (armorm.model.pairwise).

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

from armorm.testing.random_checkpoint import write_random_bradley_terry, write_random_pairwise
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
def pairwise_checkpoint(tmp_path_factory):
    return write_random_pairwise(tmp_path_factory.mktemp("pairwise") / "pair-pm", seed=21)


@pytest.fixture(scope="module")
def twin_checkpoint(tiny_checkpoint, tmp_path_factory):
    """A Bradley–Terry model on the session ArmoRM checkpoint's own backbone, tensor for tensor."""
    return write_random_bradley_terry(tmp_path_factory.mktemp("twin") / "twin", seed=31, backbone_of=tiny_checkpoint)


@pytest.fixture(scope="module")
def repository(checkpoints, pairwise_checkpoint, twin_checkpoint, tiny_checkpoint, tmp_path_factory):
    from armorm_export.repository import ExportOptions, export_repository

    output = tmp_path_factory.mktemp("mixed") / "repository"
    options = ExportOptions(max_tokens=TEST_MAX_TOKENS, onnx=False)
    export_repository(tiny_checkpoint, output, options)
    for name, directory in checkpoints.items():
        export_repository(directory, output, options, name=name)
    export_repository(pairwise_checkpoint, output, options, name="pair_pm")
    export_repository(twin_checkpoint, output, options, name="twin")
    assert mixture_main([str(output), "same", "armorm=1", "twin=1"]) == 0
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
                        "helpful": {"kind": "mixture", "members": members}, "pair_pm": {"kind": "pairwise"},
                        "twin": {"kind": "bradley_terry", "backbone": contract.BACKBONE.name},
                        "twin_text": {"kind": "bradley_terry", "backbone": contract.BACKBONE.name},
                        "fsfairx_text": {"kind": "bradley_terry"}, "skywork_text": {"kind": "bradley_terry"},
                        "same": {"kind": "mixture", "members": ["armorm", "twin"]},
                        "same_text": {"kind": "mixture", "members": ["armorm", "twin"]},
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
    for taken in ("fsfairx_backbone", "x_text", "y_score", "z_tokenizer"):
        assert main([str(checkpoints["fsfairx"]), str(tmp_path / "r"), "--name", taken]) == 1, taken


def test_a_repository_exported_before_the_manifest_keeps_armorm_public(checkpoints, tiny_checkpoint, tmp_path):
    from armorm.gateway.routes import public_models_of
    from armorm_export.mixture import main as mixture
    from armorm_export.repository import ExportOptions, export_repository

    options = ExportOptions(max_tokens=TEST_MAX_TOKENS, onnx=False, verify=False)
    repository = export_repository(tiny_checkpoint, tmp_path / "old", options)
    (repository / contract.MANIFEST).unlink()  # as an older export left it
    export_repository(checkpoints["fsfairx"], repository, options, name="fsfairx")
    assert public_models_of(repository) == {"armorm", "armorm_text", "fsfairx", "fsfairx_text"}
    assert mixture([str(repository), "fsfairx", "armorm=1"]) == 1, "a mixture may not take a model's name"


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
    import urllib.error
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
    request = urllib.request.Request(f"http://{mixed_server.http_url}/get_reward?model=fsfairx",
                                     data=json.dumps(document).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:  # a Bradley–Terry model: its NAME_text
        answer = json.loads(response.read())
    assert np.abs(np.array(answer["rewards"]) - served_scores(mixed_server, "fsfairx", conversations)).max() <= ATOL
    for query, fragment in (("model=helpful&weights=gpt4:1", "not members of helpful"),
                            ("model=helpful&weights=armorm:x", "is not a number"), ("model=fsfairx&weights=a:1",
                                                                                  "weigh a mixture's members"),
                            ("model=nobody", "this repository's")):
        request = urllib.request.Request(f"http://{mixed_server.http_url}/get_reward?{query}",
                                         data=json.dumps(document).encode(), method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=120)
        assert refused.value.code == 400 and fragment in json.loads(refused.value.read())["error"], query


# --- the pairwise preference model (RLHFlow/pair-preference-model-LLaMA3-8B's shape) ---------------------------
PAIR_PLAIN_TEMPLATE = ("\n{% for message in messages %}{% if loop.index0 % 2 == 0 %}\n\n<turn> user\n "
                       "{{ message['content'] }}{% else %}\n\n<turn> assistant\n {{ message['content'] }}{% endif %}"
                       "{% endfor %}\n\n\n")


def rlhflow_preference(directory, instruction, responses) -> float:
    """RLHFlow's pair-pm code (README / eval_reward_bench_pm.py), on transformers' LlamaForCausalLM: P(responses[0]
    ≻ responses[1]), the chosen one shown first and then second."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    tokenizer_plain = AutoTokenizer.from_pretrained(str(directory))
    tokenizer_plain.chat_template = PAIR_PLAIN_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    prompt_template = "[CONTEXT] {context} [RESPONSE A] {response_A} [RESPONSE B] {response_B} \n"
    token_id_a = tokenizer.encode("A", add_special_tokens=False)[0]
    token_id_b = tokenizer.encode("B", add_special_tokens=False)[0]
    context = tokenizer_plain.apply_chat_template(instruction, tokenize=False)
    probs_chosen = []
    for chosen_position in [0, 1]:
        prompt = prompt_template.format(context=context, response_A=responses[chosen_position],
                                        response_B=responses[1 - chosen_position])
        message = [{"role": "user", "content": prompt}]
        input_ids = tokenizer.encode(tokenizer.apply_chat_template(message, tokenize=False).replace(
            tokenizer.bos_token, ""), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            output = model(input_ids)
        logit_a = output.logits[0, -1, token_id_a].item()
        logit_b = output.logits[0, -1, token_id_b].item()
        z = math.exp(logit_a) + math.exp(logit_b)
        logit_chosen = [logit_a, logit_b][chosen_position]
        probs_chosen.append(math.exp(logit_chosen) / z)
    return sum(probs_chosen) / len(probs_chosen)


PAIRS = [
    ([{"role": "user", "content": "Capital of France?"}], "Paris.", "Lyon, I think, or maybe Nice."),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
      {"role": "user", "content": "Name a prime."}], "7", "8"),
    ([{"role": "user", "content": "Write a haiku about rain 🌧."}], "Soft rain on the roof,\\nquiet streets.", "No."),
]


def test_the_pairwise_model_gives_rlhflows_preference(mixed_server, pairwise_checkpoint):
    from armorm_client.pairwise import PairwiseClient

    expected = [rlhflow_preference(pairwise_checkpoint, prompt, [a, b]) for prompt, a, b in PAIRS]
    with PairwiseClient(mixed_server.grpc_url, model="pair_pm") as judge:
        alone = [judge.preference(*pair) for pair in PAIRS]
        together = judge.preferences(PAIRS)
        swapped = judge.preferences([(prompt, b, a) for prompt, a, b in PAIRS])
    assert np.abs(np.array(alone) - expected).max() <= ATOL, (alone, expected)
    assert np.abs(np.array(together) - alone).max() <= ATOL, "a pair's P must not depend on its batch"
    assert np.abs(np.array(swapped) + alone - 1).max() <= ATOL, "P(B ≻ A) = 1 − P(A ≻ B): both orders averaged"


def test_rankings_say_their_cost_in_forwards(mixed_server):
    from armorm_client.pairwise import PairwiseClient

    prompt, responses = "Name a colour.", ["Teal.", "Red.", "Blue, like the sky.", "no", "Green!"]
    with PairwiseClient(mixed_server.grpc_url, model="pair_pm") as judge:
        tournament = judge.rank(prompt, responses)
        every = judge.rank(prompt, responses, "all_pairs")
        p = {(a, b): judge.preference(prompt, responses[a], responses[b]) for a in range(5) for b in range(5) if a != b}
    assert tournament.forwards == 2 * (len(responses) - 1) and len(tournament.matches) == len(responses) - 1
    assert every.forwards == len(responses) * (len(responses) - 1) and len(every.matches) == 10
    assert sorted(tournament.order) == sorted(every.order) == list(range(5))
    winner = tournament.best
    assert all(p[(winner, other)] >= 0.5 - ATOL for a, other, _ in tournament.matches if winner in (a, other)
               and other != winner), "the winner won each of its matches"
    mean = [np.mean([p[(i, j)] for j in range(5) if j != i]) for i in range(5)]
    assert every.order == sorted(range(5), key=lambda i: -mean[i])
    with PairwiseClient(mixed_server.grpc_url, model="pair_pm") as judge:
        many = judge.rank(prompt, [f"Colour {i}." for i in range(12)], "all_pairs")
    assert len(many.matches) == 66 and many.forwards == 132, "66 pairs: sent in requests of at most 64"


def test_a_bad_pair_fails_alone_with_what_to_fix(mixed_server):
    from tritonclient.utils import InferenceServerException

    from armorm_client.pairwise import PairwiseClient

    with PairwiseClient(mixed_server.grpc_url, model="pair_pm") as judge:
        with pytest.raises(InferenceServerException, match="response_a"):
            judge.client.infer("pair_pm", [_pair_tensor([b'{"prompt": "x"}'])])
        twice = b'{"prompt": "x", "response_a": "a", "response_a": "b", "response_b": "c"}'
        with pytest.raises(InferenceServerException, match="gives the key 'response_a' twice"):
            judge.client.infer("pair_pm", [_pair_tensor([twice])])
        assert 0.0 <= judge.preference("Hi", "Hello", "Go away") <= 1.0, "the server keeps serving"


def _pair_tensor(rows):
    tensor = grpcclient.InferInput(contract.PAIR.name, [len(rows), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[r] for r in rows], dtype=object))
    return tensor



def test_the_client_and_the_trainer_functions_call_any_reward_model_of_the_repository(mixed_server, tokenizer,
                                                                                     monkeypatch):
    """ArmoRMClient(model=...), ARMORM_MODEL (verl) and ArmoRMReward(model=...) (TRL): a Bradley–Terry model's or a
    mixture's score, the mixture's member scores in `extra`; templated text goes to the mixture's NAME_text."""
    from armorm_client import ArmoRMClient, TemplatedText
    from armorm_client import verl as verl_reward
    from armorm_client.trl import ArmoRMReward

    conversations = varied_conversations()[:3]
    mixture = served_scores(mixed_server, "helpful", conversations)
    members = served_scores(mixed_server, "helpful", conversations, contract.MEMBER_SCORES.name)
    with ArmoRMClient(mixed_server.grpc_url, model="helpful") as client:
        scored = [client.score(c) for c in conversations]
        texts = client.score_texts([TemplatedText(tokenizer.apply_chat_template(c, tokenize=False))
                                    for c in conversations])
    for result, text, want, row in zip(scored, texts, mixture, members):
        assert abs(result.score - want) <= ATOL and abs(text.score - want) <= ATOL
        assert np.abs(result.extra["member_scores"] - row).max() <= ATOL and not len(result.rewards)
        assert result.to_dict()["score"] == result.score
    monkeypatch.setenv("ARMORM_URL", mixed_server.grpc_url)
    monkeypatch.setenv("ARMORM_MODEL", "helpful")
    prompt, response = conversations[0][:-1], conversations[0][-1]["content"]
    row = verl_reward.compute_score("hh", response, None, extra_info={"prompt": prompt})
    assert abs(row["score"] - mixture[0]) <= ATOL
    monkeypatch.delenv("ARMORM_MODEL")
    reward = ArmoRMReward(mixed_server.grpc_url, model="fsfairx")
    bradley_terry = served_scores(mixed_server, "fsfairx", conversations)
    got = reward([c[:-1] for c in conversations], [c[-1]["content"] for c in conversations])
    assert np.abs(np.array(got) - bradley_terry).max() <= ATOL
    reward.close()


def test_a_bad_request_batched_into_a_mixture_fails_alone(mixed_server):
    """The mixture sends its whole batch to each member in one call; a member refusing it is asked again request by
    request, so the neighbours of a bad request are still scored."""
    from concurrent.futures import ThreadPoolExecutor

    good = varied_conversations()[:5]
    expected = served_scores(mixed_server, "helpful", good)
    bad = [{"role": "user", "content": "word " * (TEST_MAX_TOKENS + 10)}, {"role": "assistant", "content": "ok"}]
    batch = [*good[:2], bad, *good[2:]]

    def send(conversation):
        try:
            return float(served_scores(mixed_server, "helpful", [conversation])[0])
        except InferenceServerException as err:
            return err

    for _ in range(3):  # concurrent sends: most rounds batch them together in the mixture
        with ThreadPoolExecutor(len(batch)) as pool:
            results = list(pool.map(send, batch))
        assert isinstance(results[2], InferenceServerException) and "armorm: " in str(results[2])
        scored = [r for r in results if not isinstance(r, Exception)]
        assert np.abs(np.array(scored) - expected).max() <= ATOL


# --- a Bradley–Terry model on ArmoRM's own backbone ------------------------------------------------------------
def test_a_model_with_armorms_backbone_runs_on_armorms_backbone_model(mixed_server, repository, twin_checkpoint,
                                                                      tmp_path_factory):
    """Found by hash at export: no second copy of the weights; scores still as transformers gives them."""
    from armorm_export.repository import ExportOptions, export_repository, read_config

    assert not (repository / "twin_backbone").exists()
    steps = [step.model_name for step in read_config(repository / "twin" / "config.pbtxt").ensemble_scheduling.step]
    assert steps == ["twin_tokenizer", contract.BACKBONE.name, "twin_score"]
    conversations = varied_conversations()[:4]
    expected = np.array([authors_score(twin_checkpoint, c, llama31=False) for c in conversations])
    assert np.abs(served_scores(mixed_server, "twin", conversations) - expected).max() <= ATOL
    other = tmp_path_factory.mktemp("other-armorm")
    from armorm.testing.random_checkpoint import write_random_checkpoint

    with pytest.raises(ValueError, match="twin, twin_text run on armorm_backbone"):
        export_repository(write_random_checkpoint(other / "armorm", seed=99), repository,
                          ExportOptions(max_tokens=TEST_MAX_TOKENS, onnx=False, verify=False))


def test_the_same_conversation_twice_in_one_batch_is_computed_once(mixed_server, tokenizer):
    """Two models on one backbone (or a retried request) send the backbone the same ids: computed once."""
    from armorm.serving.metrics import BACKBONE_CONVERSATIONS
    from armorm.testing.prometheus import scrape, total

    ids = tokenizer.apply_chat_template(varied_conversations()[0], tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    other = tokenizer.apply_chat_template(varied_conversations()[1], tokenize=True)
    other = other["input_ids"] if hasattr(other, "keys") else other
    metrics = f"http://{mixed_server.host}:{mixed_server.metrics_port}/metrics"

    def computed(rows) -> float:
        width = max(len(r) for r in rows)
        client = grpcclient.InferenceServerClient(mixed_server.grpc_url)
        inputs = [grpcclient.InferInput(contract.INPUT_IDS.name, [len(rows), width], "INT64"),
                  grpcclient.InferInput(contract.GATE_POSITION.name, [len(rows), 1], "INT64"),
                  grpcclient.InferInput(contract.REWARD_POSITION.name, [len(rows), 1], "INT64")]
        inputs[0].set_data_from_numpy(np.array([r + [0] * (width - len(r)) for r in rows], dtype=np.int64))
        inputs[1].set_data_from_numpy(np.array([[1]] * len(rows), dtype=np.int64))
        inputs[2].set_data_from_numpy(np.array([[len(r) - 1] for r in rows], dtype=np.int64))
        before = total(scrape(metrics), BACKBONE_CONVERSATIONS)
        result = client.infer(contract.BACKBONE.name, inputs, headers=mixed_server.admin_headers)
        client.close()
        hidden = result.as_numpy(contract.REWARD_HIDDEN.name)
        assert hidden.shape[0] == len(rows)
        return total(scrape(metrics), BACKBONE_CONVERSATIONS) - before, hidden

    third = tokenizer.apply_chat_template(varied_conversations()[2], tokenize=True)
    third = third["input_ids"] if hasattr(third, "keys") else third
    once, twice = computed([ids, ids])
    assert once == 1 and np.array_equal(twice[0], twice[1])
    assert computed([other, third])[0] == 2
    again, rows = computed([ids])
    assert again == 0 and np.array_equal(rows[0], twice[0]), "kept for one more reader (the other model)"
    assert computed([ids])[0] == 1, "read once, then gone"


def test_a_mixture_of_two_models_on_one_backbone_costs_one_forward(mixed_server):
    """armorm and twin share armorm_backbone and tokenize alike: one conversation through the mixture `same` is
    computed once, whether the two member calls meet in one batch or follow each other."""
    from armorm.serving.metrics import BACKBONE_CONVERSATIONS
    from armorm.testing.prometheus import scrape, total

    metrics = f"http://{mixed_server.host}:{mixed_server.metrics_port}/metrics"
    for index in range(3):
        conversation = [{"role": "user", "content": f"Give me fact number {index} about otters."},
                        {"role": "assistant", "content": f"Otter fact {index}: they hold hands while sleeping."}]
        before = total(scrape(metrics), BACKBONE_CONVERSATIONS)
        members = served_scores(mixed_server, "same", [conversation], contract.MEMBER_SCORES.name)
        assert total(scrape(metrics), BACKBONE_CONVERSATIONS) - before == 1, "one forward for both members"
        alone = [served_scores(mixed_server, name, [conversation])[0] for name in ("armorm", "twin")]
        assert np.abs(members[0] - alone).max() <= ATOL


def test_armorm_score_evaluates_preference_pairs_with_a_pairwise_model(mixed_server, tmp_path):
    from armorm_client.__main__ import main
    from armorm_client.pairwise import PairwiseClient

    rows = [{"id": i, "prompt": prompt, "chosen": a, "rejected": b} for i, (prompt, a, b) in enumerate(PAIRS)]
    rows.append({"id": 99, "prompt": "x", "chosen": "y"})  # no rejected: fails alone
    source, output = tmp_path / "pairs.jsonl", tmp_path / "judged.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    status = main([str(source), "--url", mixed_server.grpc_url, "--model", "pair_pm", "--pairs", "--pairwise",
                   "--output", str(output), "--progress", "off"])
    assert status == 1, "one row failed"
    judged = {row["id"]: row for row in map(json.loads, output.read_text().splitlines())}
    with PairwiseClient(mixed_server.grpc_url, model="pair_pm") as judge:
        for index, pair in enumerate(PAIRS):
            p = judge.preference(*pair)
            assert abs(judged[index]["chosen_score"] - p) <= ATOL and abs(judged[index]["margin"] - (2 * p - 1)) <= ATOL
    assert "error" in judged[99]
