"""slime's two ways to a remote reward: its own `remote_rm` (POST {"prompt", "response", "label"} per sample to
--rm-url, the JSON answer read with --reward-key), and `--custom-rm-path armorm_client.slime.reward`. Each gives
the `messages` score of the same conversation, for every prompt form slime holds."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import aiohttp
import pytest

from armorm_client import InvalidConversationError
from armorm_client import slime as slime_reward
from tests.conversations import varied_conversations
from tests.test_server import SCORE_ATOL

pytestmark = pytest.mark.integration


def prompt_forms(tokenizer, messages):
    """The prompt as slime may hold it: templated by apply_chat_template (its default), or the messages."""
    prompt = messages[:-1]
    return {"templated": tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True),
            "messages": prompt}


async def remote_rm(url: str, sample) -> object:
    """slime's rm_hub.remote_rm, its request and answer as it makes them (one sample, the whole JSON back)."""
    payload = {"prompt": sample.prompt, "response": sample.response, "label": sample.label}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async with session.post(url, json=payload) as response:
            response.raise_for_status()
            return await response.json()


def test_slimes_remote_rm_gets_the_messages_score_under_its_reward_key(server, client, tokenizer):
    for messages in varied_conversations()[:4]:
        expected = client.score(messages)
        for form, prompt in prompt_forms(tokenizer, messages).items():
            sample = SimpleNamespace(prompt=prompt, response=messages[-1]["content"], label=None)
            answer = asyncio.run(remote_rm(f"http://{server.http_url}/reward", sample))
            assert abs(answer["score"] - expected.score) <= SCORE_ATOL, form  # --reward-key score
            assert abs(answer["helpsteer-helpfulness"] - expected.rewards[0]) <= SCORE_ATOL, form
    plain = SimpleNamespace(prompt="Capital of France?", response="Paris.", label="Paris")
    expected = client.score([{"role": "user", "content": "Capital of France?"},
                             {"role": "assistant", "content": "Paris."}])
    answer = asyncio.run(remote_rm(f"http://{server.http_url}/reward", plain))
    assert abs(answer["score"] - expected.score) <= SCORE_ATOL, "a plain-text prompt is one user turn"


def test_a_refused_sample_is_a_400_with_its_reason(server):
    sample = SimpleNamespace(prompt="<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", response="Hello",
                             label=None)
    with pytest.raises(aiohttp.ClientResponseError) as raised:
        asyncio.run(remote_rm(f"http://{server.http_url}/reward", sample))
    assert raised.value.status == 400 and "ChatML" in raised.value.message
    answer = asyncio.run(remote_rm(f"http://{server.http_url}/reward?refused_reward=-3", sample))
    assert answer["score"] == -3 and answer["refused"] == 1.0


def test_the_custom_rm_function_scores_one_sample_or_a_batch(server, client, tokenizer, monkeypatch):
    monkeypatch.setenv("ARMORM_URL", server.grpc_url)
    monkeypatch.delenv(slime_reward.INVALID_SCORE_ENV, raising=False)
    conversations = varied_conversations()[:3]
    samples = [SimpleNamespace(prompt=prompt_forms(tokenizer, m)["templated"], response=m[-1]["content"], label=None)
               for m in conversations]
    expected = [client.score(m).score for m in conversations]
    one = asyncio.run(slime_reward.reward(SimpleNamespace(), samples[0]))
    assert abs(one - expected[0]) <= SCORE_ATOL
    batch = asyncio.run(slime_reward.reward(SimpleNamespace(), samples))
    assert all(abs(got - want) <= SCORE_ATOL for got, want in zip(batch, expected, strict=True))
    refused = SimpleNamespace(prompt="<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", response="Hello",
                              label=None)  # another model's template: the server refuses it, naming it
    with pytest.raises(InvalidConversationError):
        asyncio.run(slime_reward.reward(SimpleNamespace(), refused))
    monkeypatch.setenv(slime_reward.INVALID_SCORE_ENV, "-5")
    assert asyncio.run(slime_reward.reward(SimpleNamespace(), [refused, samples[1]]))[0] == -5.0
