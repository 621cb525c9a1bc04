"""The ensemble's second input form, `text`: a conversation already rendered by the chat template, as RLHF trainers
hold it (prompt + response decoded with special tokens kept). It is scored on exactly its tokens, which are the
model card's for the same conversation; bad text fails alone with a message that says what is wrong."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from armorm_client import InvalidConversationError, contract
from tests.conversations import TEST_MAX_TOKENS, varied_conversations

SCORE_ATOL = 1e-5  # the same tokens through the same server: only batching could differ


def templated(tokenizer, messages) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False)


def card_ids(tokenizer, messages) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_text_tokenizes_to_the_model_cards_ids_and_positions(tokenizer, reference):
    from armorm.model.conversation import MESSAGES_FORM, TEXT_FORM, ConversationTokenizer, tokenize_requests

    served = ConversationTokenizer(tokenizer)
    for messages in varied_conversations():
        (text_row,), _ = tokenize_requests(served, [[templated(tokenizer, messages).encode()]], [TEXT_FORM])
        (json_row,), _ = tokenize_requests(served, [[json.dumps(messages).encode()]], [MESSAGES_FORM])
        assert list(text_row["input_ids"][0]) == card_ids(tokenizer, messages)
        expected = reference.tokenize(messages)
        assert int(text_row["gate_position"][0, 0]) == expected.gate_position
        assert int(text_row["reward_position"][0, 0]) == expected.reward_position
        for name in ("input_ids", "gate_position", "reward_position", "num_tokens"):
            np.testing.assert_array_equal(text_row[name], json_row[name])


def test_a_server_that_refuses_special_tokens_in_content_refuses_text(tokenizer):
    from armorm.model.conversation import TEXT_FORM, ConversationTokenizer, InputLimits, tokenize_requests

    strict = ConversationTokenizer(tokenizer, InputLimits(reject_special_tokens=True))
    (result,), _ = tokenize_requests(strict, [[templated(tokenizer, varied_conversations()[0]).encode()]], [TEXT_FORM])
    assert result.reason == "special_token" and "send messages instead" in str(result)


def test_a_generation_ending_in_padding_or_unclosed_scores_as_the_closed_turn(tokenizer):
    from armorm.model.conversation import TEXT_FORM, ConversationTokenizer, tokenize_requests

    served = ConversationTokenizer(tokenizer)
    messages = varied_conversations()[0]
    closed = templated(tokenizer, messages)
    unclosed = closed.removesuffix("<|eot_id|>")
    rows = [closed, unclosed, closed + "[PAD][PAD]", unclosed + "<|end_of_text|>"]
    results, _ = tokenize_requests(served, [[row.encode()] for row in rows], [TEXT_FORM] * len(rows))
    assert len(results) == len(rows)
    for result in results:
        np.testing.assert_array_equal(result["input_ids"], results[0]["input_ids"])


def infer_texts(server, texts: list[bytes], name: str = contract.TEXT.name):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput(name, [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t] for t in texts], dtype=object))
    return client.infer(contract.ENSEMBLE.name, [tensor])


@pytest.mark.integration
def test_text_scores_equal_messages_scores_and_the_reference(client, tokenizer, reference):
    for index, messages in enumerate(varied_conversations()):
        (by_text,) = client.score_texts([templated(tokenizer, messages)])
        by_messages = client.score(messages)
        assert by_text.num_tokens == by_messages.num_tokens, index
        assert abs(by_text.score - by_messages.score) <= SCORE_ATOL, index
        np.testing.assert_allclose(by_text.rewards, by_messages.rewards, atol=SCORE_ATOL)
        np.testing.assert_allclose(by_text.gating, by_messages.gating, atol=SCORE_ATOL)
        assert abs(by_text.score - reference.score(messages).score) <= 1e-4, index


BAD_TEXTS = {
    "no BOS": ("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", "must start with <|begin_of_text|>"),
    "special tokens stripped": ("user\n\nHi there.assistant\n\nHello!", "skip_special_tokens=False"),
    "no assistant turn": ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
                          "no assistant turn after a prompt"),
    "two conversations": (None, "send one conversation per row"),
    "not UTF-8": (b"<|begin_of_text|>\xff\xfe", "not valid UTF-8"),
    "over the token limit": (None, f"the limit is {TEST_MAX_TOKENS} tokens"),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(BAD_TEXTS))
def test_bad_text_is_invalid_argument_alone_and_says_what_is_wrong(server, client, tokenizer, case):
    good = templated(tokenizer, varied_conversations()[1])
    text, expected = BAD_TEXTS[case]
    if case == "two conversations":
        text = good + good
    if case == "over the token limit":
        text = templated(tokenizer, [{"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "word " * (TEST_MAX_TOKENS + 10)}])
    alone = client.score_texts([good])[0]
    # Sent together with good neighbours (so the dynamic batcher may put them in one batch): only it fails.
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda t: attempt(client, t), [good, good, good, text, good, good, good, good]))
    assert isinstance(answers[3], InvalidConversationError) and expected in str(answers[3]), answers[3]
    for answer in answers[:3] + answers[4:]:
        assert abs(answer.score - alone.score) <= SCORE_ATOL


def attempt(client, text):
    try:
        return client.score_texts([text])[0]
    except InvalidConversationError as err:
        return err


@pytest.mark.integration
def test_a_request_must_send_exactly_one_form(server, tokenizer):
    good = templated(tokenizer, varied_conversations()[1]).encode()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    both = []
    for spec, value in ((contract.MESSAGES, json.dumps(varied_conversations()[1]).encode()), (contract.TEXT, good)):
        tensor = grpcclient.InferInput(spec.name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value]], dtype=object))
        both.append(tensor)
    with pytest.raises(InferenceServerException) as raised:
        client.infer(contract.ENSEMBLE.name, both)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "exactly one of the inputs" in raised.value.message()
    assert infer_texts(server, [good]).as_numpy(contract.SCORE.name).shape == (1, 1)
