"""The served ensemble over real gRPC against the in-process reference forward."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest

from armorm_client import ArmoRMClient, AsyncArmoRMClient, InvalidConversationError
from tests.conversations import TEST_MAX_TOKENS, varied_conversations

pytestmark = pytest.mark.integration

SCORE_ATOL = 1e-4  # fp32 on CPU
VECTOR_ATOL = 1e-4


@pytest.fixture(scope="module")
def singles(client):
    """Each varied conversation scored alone, one request at a time."""
    return [client.score(messages) for messages in varied_conversations()]


def assert_same(served, expected, what: str) -> None:
    assert served.num_tokens == expected.num_tokens, what
    assert abs(served.score - expected.score) <= SCORE_ATOL, f"{what}: score {served.score} vs {expected.score}"
    for name in ("rewards", "gating", "coefficients"):
        error = float(np.abs(getattr(served, name) - getattr(expected, name)).max())
        assert error <= VECTOR_ATOL, f"{what}: {name} differs by {error:.3g}"


def test_served_scores_equal_the_reference_forward(singles, reference):
    conversations = varied_conversations()
    assert len(conversations) >= 20
    near_limit = singles[-1].num_tokens
    assert 0.9 * TEST_MAX_TOKENS <= near_limit <= TEST_MAX_TOKENS, near_limit
    for index, (messages, served) in enumerate(zip(conversations, singles)):
        assert_same(served, reference.score(messages), f"conversation {index}")


def test_model_card_identity_score_is_rewards_dot_coefficients(singles):
    for result in singles:
        assert abs(result.score - float(np.dot(result.rewards, result.coefficients))) <= 1e-3


def test_responses_to_one_prompt_share_the_gating(client):
    prompt = [{"role": "user", "content": "Pick a colour."}]
    a = client.score(prompt + [{"role": "assistant", "content": "Blue."}])
    b = client.score(prompt + [{"role": "assistant", "content": "Green, because it is calm."}])
    np.testing.assert_allclose(a.gating, b.gating, atol=1e-6)
    assert a.score != b.score


def backbone_counts(server) -> tuple[int, int]:
    stats = server.grpc_client().get_inference_statistics(
        "armorm_backbone", as_json=True, headers=server.admin_headers)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def test_concurrent_requests_are_batched_and_batch_invariant(server, client, singles):
    conversations = varied_conversations()
    requests = conversations + conversations[:8]  # 30 requests of different lengths
    inferences_before, executions_before = backbone_counts(server)
    results = client.score_batch(requests, max_in_flight=len(requests))
    inferences, executions = (a - b for a, b in zip(backbone_counts(server), (inferences_before, executions_before)))
    assert inferences == len(requests)
    assert executions < inferences, f"{executions} backbone executions for {inferences} requests: nothing batched"
    assert len(results) == len(requests)
    for index, result in enumerate(results):
        assert_same(result, singles[index % len(conversations)], f"request {index} in a batch")


BAD_INPUTS = {
    "not JSON": (b"this is not json", "not valid JSON"),
    "not a list": (b'{"role": "user", "content": "hi"}', "must be a JSON list"),
    "missing role": (b'[{"content": "hi"}, {"role": "assistant", "content": "yo"}]', "has no 'role'"),
    "missing content": (b'[{"role": "user"}, {"role": "assistant", "content": "yo"}]', "has no 'content'"),
    "unknown role": (b'[{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "yo"}]',
                     "use one of system, user, assistant"),
    "no assistant turn at the end": (b'[{"role": "user", "content": "hi"}]', "last message must be the assistant"),
    "empty list": (b"[]", "empty list"),
    "invalid UTF-8": (b'[{"role": "user", "content": "\xff\xfe"}]', "not valid UTF-8"),
    "over-length": (json.dumps([{"role": "user", "content": "word " * 1200},
                                {"role": "assistant", "content": "ok"}]).encode(),
                    f"the limit is {TEST_MAX_TOKENS} tokens"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_invalid_argument_and_the_server_keeps_serving(client, singles, case):
    raw, fragment = BAD_INPUTS[case]
    with pytest.raises(InvalidConversationError) as caught:
        client.score(raw)
    assert caught.value.status.endswith("INVALID_ARGUMENT")
    assert fragment in str(caught.value)
    assert_same(client.score(varied_conversations()[0]), singles[0], "good request after a bad one")


def test_one_bad_request_in_a_batch_fails_alone(client, singles):
    conversations = varied_conversations()[:12]
    requests: list = list(conversations)
    requests.insert(5, b'[{"role": "user", "content": "no answer"}]')
    results = client.score_batch(requests, max_in_flight=len(requests), return_exceptions=True)
    assert len(results) == len(requests) and isinstance(results[5], InvalidConversationError)
    good = results[:5] + results[6:]
    for index, result in enumerate(good):
        assert_same(result, singles[index], f"neighbour {index} of a bad request")


def test_async_client(server, singles):
    async def run():
        async with AsyncArmoRMClient(server.grpc_url) as client:
            return await client.score_batch(varied_conversations()[:6])

    results = asyncio.run(run())
    assert len(results) == 6
    for index, result in enumerate(results):
        assert_same(result, singles[index], f"async {index}")


def test_the_async_client_offers_what_the_blocking_one_offers(server, singles, tokenizer):
    """is_ready, score_texts and score_stream (in order, a bad request yielded in its place, an exception item
    passed through unsent), awaited."""
    blocking = {name for name in dir(ArmoRMClient) if not name.startswith("_")} - {"close"}
    assert blocking <= {name for name in dir(AsyncArmoRMClient) if not name.startswith("_")}
    conversations = varied_conversations()[:4]
    unusable = ValueError("line 3 is not JSON")

    async def run():
        async with AsyncArmoRMClient(server.grpc_url) as client:
            ready = await client.is_ready()
            texts = await client.score_texts([tokenizer.apply_chat_template(c, tokenize=False)
                                              for c in conversations[:2]])
            items = [[conversations[0]], [[{"role": "user", "content": "x"}]], unusable, conversations[1:4]]
            streamed = [answer async for answer in client.score_stream(items, window=2)]
            return ready, texts, streamed

    ready, texts, streamed = asyncio.run(run())
    assert ready
    for index, result in enumerate(texts):
        assert_same(result, singles[index], f"text {index}")
    assert len(streamed) == 4
    assert_same(streamed[0][0], singles[0], "stream 0")
    assert isinstance(streamed[1], InvalidConversationError) and streamed[2] is unusable
    for offset, result in enumerate(streamed[3]):
        assert_same(result, singles[1 + offset], f"stream 3.{offset}")


def test_cli_scores_a_jsonl_file(server, tmp_path, singles):
    path = tmp_path / "conversations.jsonl"
    lines = [json.dumps({"messages": m}) for m in varied_conversations()[:3]] + ['[{"role": "user", "content": "x"}]']
    path.write_text("\n".join(lines) + "\n")
    done = subprocess.run([sys.executable, "-m", "armorm_client", str(path), "--url", server.grpc_url,
                           "--format", "jsonl"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, "one row was invalid"
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2, 3]
    for row, expected in zip(rows[:3], singles):
        assert abs(row["score"] - expected.score) <= SCORE_ATOL
        expected_rewards = expected.rewards_by_objective()
        assert list(row["rewards"]) == list(expected_rewards)
        np.testing.assert_allclose([row["rewards"][name] for name in expected_rewards],
                                   list(expected_rewards.values()), atol=VECTOR_ATOL)
    assert "INVALID_ARGUMENT" in rows[3]["status"]


def test_client_reports_an_unreachable_server():
    from armorm_client import ServerUnavailableError

    with ArmoRMClient("127.0.0.1:1", timeout_s=2) as client:
        assert not client.is_ready()
        with pytest.raises(ServerUnavailableError):
            client.score(varied_conversations()[0])


def test_best_of_n_in_one_request_equals_scoring_each_alone(client, reference):
    prompt = [{"role": "user", "content": "Suggest a name for a cat."}]
    responses = ["Tom.", "Whiskers, because of the whiskers.", "Mr. Mittens the Third " * 10, "猫"]
    results = client.score_responses(prompt, responses)
    assert len(results) == len(responses)
    for response, result in zip(responses, results):
        assert_same(result, reference.score(prompt + [{"role": "assistant", "content": response}]), response)
    assert all(np.array_equal(results[0].gating, r.gating) for r in results)


def test_a_bad_response_fails_its_best_of_n_request_with_a_clear_message(client):
    with pytest.raises(InvalidConversationError, match="must be a string"):
        client.score_responses([{"role": "user", "content": "Hi"}], ["Hello", 42])  # type: ignore[list-item]
