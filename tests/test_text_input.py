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
    return client.infer(contract.TEXT_ENSEMBLE.name if name == contract.TEXT.name else contract.ENSEMBLE.name,
                        [tensor])


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
def test_each_public_model_takes_its_one_form(server, tokenizer):
    """armorm takes `messages`, armorm_text takes `text`, each required: the other form (or both) is refused."""
    good = templated(tokenizer, varied_conversations()[1]).encode()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensors = {}
    for spec, value in ((contract.MESSAGES, json.dumps(varied_conversations()[1]).encode()), (contract.TEXT, good)):
        tensors[spec.name] = grpcclient.InferInput(spec.name, [1, 1], "BYTES")
        tensors[spec.name].set_data_from_numpy(np.array([[value]], dtype=object))
    for model, sent in ((contract.ENSEMBLE.name, [contract.MESSAGES.name, contract.TEXT.name]),
                        (contract.ENSEMBLE.name, [contract.TEXT.name]),
                        (contract.TEXT_ENSEMBLE.name, [contract.MESSAGES.name])):
        with pytest.raises(InferenceServerException) as raised:
            client.infer(model, [tensors[name] for name in sent])
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT", (model, sent)
    by_text = client.infer(contract.TEXT_ENSEMBLE.name, [tensors[contract.TEXT.name]]).as_numpy(contract.SCORE.name)
    by_messages = client.infer(contract.ENSEMBLE.name, [tensors[contract.MESSAGES.name]]).as_numpy(contract.SCORE.name)
    assert abs(float(by_text[0, 0]) - float(by_messages[0, 0])) <= SCORE_ATOL


def padded_variants(tokenizer, messages, pad: str) -> dict[str, str]:
    """What trainers send, built as they build it: prompt ids left-padded and response ids right-padded with the
    policy's pad token, then batch_decode(..., skip_special_tokens=False)."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(messages[-1]["content"] + "<|eot_id|>", add_special_tokens=False)["input_ids"]
    pad_id = tokenizer.convert_tokens_to_ids(pad)
    left, right = [pad_id] * 3 + prompt_ids, response_ids + [pad_id] * 4
    decoded = tokenizer.batch_decode([left + response_ids, prompt_ids + right, left + right],
                                     skip_special_tokens=False)
    return dict(zip(("left", "right", "both"), decoded))


@pytest.mark.parametrize("pad", ["<|eot_id|>", "<|end_of_text|>", "[PAD]"])
def test_padded_text_gives_the_ids_of_the_same_messages(tokenizer, pad):
    from armorm.model.conversation import MESSAGES_FORM, TEXT_FORM, ConversationTokenizer, tokenize_requests

    served = ConversationTokenizer(tokenizer)
    for messages in varied_conversations()[:4]:
        (expected,), _ = tokenize_requests(served, [[json.dumps(messages).encode()]], [MESSAGES_FORM])
        for name, text in padded_variants(tokenizer, messages, pad).items():
            (got,), _ = tokenize_requests(served, [[text.encode()]], [TEXT_FORM])
            assert not isinstance(got, Exception), (pad, name, got)
            np.testing.assert_array_equal(got["input_ids"], expected["input_ids"], err_msg=f"{pad} {name}")
            np.testing.assert_array_equal(got["reward_position"], expected["reward_position"])


def test_a_generation_cut_in_whitespace_is_trimmed_as_the_template_trims_it(tokenizer):
    from armorm.model.conversation import MESSAGES_FORM, TEXT_FORM, ConversationTokenizer, tokenize_requests

    served = ConversationTokenizer(tokenizer)
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name two rivers."},
              {"role": "assistant", "content": "The Nile."}, {"role": "user", "content": "  And another?\n"}]
    for cut in ("The Amazon and the  ", "The Amazon\n\n", "  The Amazon \t"):
        messages = [*prompt, {"role": "assistant", "content": cut}]
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) + cut  # no eot
        (got,), _ = tokenize_requests(served, [[text.encode()]], [TEXT_FORM])
        (expected,), _ = tokenize_requests(served, [[json.dumps(messages).encode()]], [MESSAGES_FORM])
        np.testing.assert_array_equal(got["input_ids"], expected["input_ids"], err_msg=repr(cut))


@pytest.mark.parametrize(("text", "expected"), [
    ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>", "ChatML"),
    ("<s>[INST] Hi [/INST] Hello</s>", "[INST]"),
    ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>assistant: Hello",
     "not in Llama-3's chat template at character"),
    ("<|begin_of_text|><|start_header_id|>tool<|end_header_id|>\n\nx<|eot_id|><|start_header_id|>assistant"
     "<|end_header_id|>\n\nHello<|eot_id|>", "role 'tool'"),
])
def test_text_in_another_template_is_refused_with_what_is_expected(tokenizer, text, expected):
    from armorm.model.conversation import TEXT_FORM, ConversationTokenizer, tokenize_requests

    (result,), _ = tokenize_requests(ConversationTokenizer(tokenizer), [[text.encode()]], [TEXT_FORM])
    assert isinstance(result, Exception) and expected in str(result), result
    if "Llama-3" not in expected and "role" not in expected:
        assert "<|start_header_id|>ROLE<|end_header_id|>" in str(result), "says what ArmoRM reads"


@pytest.mark.integration
@pytest.mark.parametrize("pad", ["<|eot_id|>", "[PAD]"])
def test_padded_text_scores_equal_the_messages_score(client, tokenizer, pad):
    for messages in varied_conversations()[:3]:
        expected = client.score(messages)
        for name, text in padded_variants(tokenizer, messages, pad).items():
            (got,) = client.score_texts([text])
            assert got.num_tokens == expected.num_tokens and abs(got.score - expected.score) <= SCORE_ATOL, name
