"""OpenRLHF's remote reward protocol (POST /get_reward on the public HTTP port), on the exact JSON its trainer
sends: each `query` the chat-templated prompt + response, special tokens kept. Rewards must equal the ensemble's
score for the same conversation, with the 19 objectives and gating weights in extra_logs."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import aiohttp
import numpy as np
import pytest

from armorm.gateway.routes import AccessPolicy, Api, authorization_key
from armorm_client.contract import OBJECTIVES
from tests.conversations import TEST_MAX_TOKENS, varied_conversations

ATOL = 1e-5  # fp32: the same tokens through the same server


def test_the_api_key_rides_in_authorization_for_clients_that_send_no_headers():
    import base64

    basic = "Basic " + base64.b64encode(b"rm:s3cret").decode()
    assert authorization_key(basic) == "s3cret"
    assert authorization_key("Bearer s3cret") == "s3cret"
    assert authorization_key("Basic !!notbase64") is None
    assert authorization_key(None) is None
    policy = AccessPolicy(api_key="s3cret")
    headers = {"authorization": basic}
    assert policy.check(Api.INFERENCE, headers.get) is None
    assert policy.check(Api.INFERENCE, {"authorization": "Bearer wrong"}.get).missing is False
    assert policy.check(Api.INFERENCE, {}.get).missing is True


pytestmark = pytest.mark.integration


def post(server, document, path: str = "/get_reward") -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=json.dumps(document).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def openrlhf_request(tokenizer, conversations) -> dict:
    """What OpenRLHF's _fetch_rewards_via_http posts: queries templated by the tokenizer, prompts, labels."""
    return {"query": [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations],
            "prompts": [tokenizer.apply_chat_template(c[:-1], tokenize=False, add_generation_prompt=True)
                        for c in conversations],
            "labels": [""] * len(conversations)}


def test_rewards_equal_the_ensembles_scores_with_objectives_in_extra_logs(server, client, tokenizer):
    conversations = varied_conversations()
    status, answer = post(server, openrlhf_request(tokenizer, conversations))
    assert status == 200, answer
    expected = [client.score(c) for c in conversations]
    np.testing.assert_allclose(answer["rewards"], [e.score for e in expected], atol=ATOL)
    assert answer["scores"] == answer["rewards"]
    logs = answer["extra_logs"]
    assert set(logs) == set(OBJECTIVES) | {f"gating/{name}" for name in OBJECTIVES}
    for index, name in enumerate(OBJECTIVES):
        np.testing.assert_allclose(logs[name], [e.rewards[index] for e in expected], atol=ATOL)
        np.testing.assert_allclose(logs[f"gating/{name}"], [e.gating[index] for e in expected], atol=ATOL)


def test_one_sample_per_call_concurrently_as_current_openrlhf_sends(server, client, tokenizer):
    conversations = varied_conversations()[:8] * 4

    async def run():
        async with aiohttp.ClientSession() as session:
            async def one(conversation):
                async with session.post(f"http://{server.http_url}/get_reward",
                                        json=openrlhf_request(tokenizer, [conversation])) as response:
                    assert response.status == 200, await response.text()
                    return (await response.json())["rewards"][0]
            return await asyncio.gather(*(one(c) for c in conversations))

    rewards = asyncio.run(run())
    np.testing.assert_allclose(rewards, [client.score(c).score for c in conversations], atol=ATOL)
    from armorm.testing.prometheus import scrape, total

    assert total(scrape(server.metrics_url), "armorm_gateway_in_flight") == 0, "every query's slot was given back"


BAD = {
    "not JSON": (b"{", "must be JSON"),
    "no query": ({"prompts": ["x"]}, '"query" must be a list'),
    "query not strings": ({"query": [1]}, "query[0] must be a string"),
    "special tokens stripped": ({"query": ["user\n\nHi there.assistant\n\nHello!"]}, "skip_special_tokens=False"),
    "over the token limit": (None, f"the limit is {TEST_MAX_TOKENS} tokens"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_call_fails_with_400_and_a_reason(server, tokenizer, case):
    document, expected = BAD[case]
    if case == "over the token limit":
        long = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * (TEST_MAX_TOKENS + 10)}]
        document = openrlhf_request(tokenizer, [varied_conversations()[0], long])
        assert post(server, document)[1]["error"].startswith("query[1] of 2: "), "the refused query is named"
    if isinstance(document, bytes):
        request = urllib.request.Request(f"http://{server.http_url}/get_reward", data=document, method="POST")
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=60)
        status, answer = raised.value.code, json.loads(raised.value.read())
    else:
        status, answer = post(server, document)
    assert status == 400 and expected in answer["error"], answer
    status, answer = post(server, openrlhf_request(tokenizer, varied_conversations()[:1]))
    assert status == 200 and len(answer["rewards"]) == 1


def test_an_empty_query_list_answers_empty_lists(server):
    """OpenRLHF v0.11 splits a batch over --reward.remote_url URL1,URL2: with one sample, the second URL gets none."""
    status, answer = post(server, {"query": [], "prompts": [], "labels": []})
    assert status == 200 and answer["rewards"] == [] and answer["scores"] == []
    assert all(values == [] for values in answer["extra_logs"].values()) and answer["extra_logs"]


def test_the_reason_of_a_refusal_is_in_the_status_line(server, tokenizer):
    """OpenRLHF logs `400, message='<reason phrase>'` only: the reason must be there, not 'Bad Request'."""
    import http.client

    connection = http.client.HTTPConnection(*server.http_url.split(":"), timeout=60)
    document = {"query": ["user\n\nHi there.assistant\n\nHello!"]}
    connection.request("POST", "/get_reward", json.dumps(document), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 400 and "skip_special_tokens=False" in response.reason, response.reason
    connection.close()


def test_refused_queries_get_the_stated_reward_only_when_asked(server, client, tokenizer):
    good = varied_conversations()[:2]
    document = openrlhf_request(tokenizer, good)
    document["query"].insert(1, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>")
    status, answer = post(server, document)
    assert status == 400 and "query[1] of 3" in answer["error"] and "ChatML" in answer["error"], "off by default"
    status, answer = post(server, document, "/get_reward?refused_reward=-7.5")
    assert status == 200, answer
    expected = [client.score(c).score for c in good]
    np.testing.assert_allclose([answer["rewards"][0], answer["rewards"][2]], expected, atol=ATOL)
    assert answer["rewards"][1] == -7.5 and answer["extra_logs"]["refused"] == [0.0, 1.0, 0.0]
    assert post(server, document, "/get_reward?refused_reward=nan")[0] == 400


def test_objective_weights_steer_the_rewards_and_keep_the_gated_score_beside_them(server, client, tokenizer):
    conversations = varied_conversations()[:3]
    weights = "helpsteer-helpfulness:0.97,helpsteer-verbosity:-0.26"
    document = openrlhf_request(tokenizer, conversations)
    status, answer = post(server, document, f"/get_reward?objective_weights={weights}")
    assert status == 200, answer
    expected = [client.score(c) for c in conversations]
    steered = [0.97 * e.rewards[0] - 0.26 * e.rewards[4] for e in expected]  # helpfulness, verbosity
    np.testing.assert_allclose(answer["rewards"], steered, atol=ATOL)
    np.testing.assert_allclose(answer["extra_logs"]["armorm_score"], [e.score for e in expected], atol=ATOL)
    status, answer = post(server, {"prompt": conversations[0][:-1], "response": conversations[0][-1]["content"]},
                          f"/reward?objective_weights={weights}")
    assert status == 200 and abs(answer["score"] - steered[0]) <= ATOL, answer
    assert abs(answer["armorm_score"] - expected[0].score) <= ATOL
    for bad, fragment in (("helpfulness:1", "not one of ArmoRM's objectives"),
                          ("helpsteer-helpfulness:1&objective_weights=code-style:1", "give it once")):
        status, answer = post(server, openrlhf_request(tokenizer, conversations[:1]),
                              f"/get_reward?objective_weights={bad}")
        assert status == 400 and fragment in answer["error"], answer
