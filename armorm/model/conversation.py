"""From a request's `messages` (or its already chat-templated `text`) to token ids and the two positions ArmoRM
reads.

Validation happens here, before any heavy work, and every failure is a `ConversationError`
whose message says what to fix; the served tokenizer turns it into INVALID_ARGUMENT.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from armorm_client.contract import GATE_POSITION, INPUT_IDS, NUM_TOKENS, REWARD_POSITION

T = TypeVar("T")

ROLES = ("system", "user", "assistant")
# The end of the prompt as the chat template renders it; the gate reads the hidden state at its start.
END_OF_TURN = "<|eot_id|>"
GATE_PATTERN_TEXT = END_OF_TURN + "<|start_header_id|>assistant<|end_header_id|>\n\n"
# The request's two forms: parsed messages (the server applies the chat template) or the templated text itself.
MESSAGES_FORM, TEXT_FORM = "messages", "text"
# One turn of Llama-3's chat template; a generation cut at a length limit leaves the last one unclosed.
LLAMA3_TURN = re.compile(r"<\|start_header_id\|>(?P<role>[^<\n]*)<\|end_header_id\|>\n\n(?P<content>.*?)"
                         r"(?:<\|eot_id\|>|\Z)", re.DOTALL)
TURN_SHAPE = "<|start_header_id|>ROLE<|end_header_id|>\\n\\nCONTENT<|eot_id|>"
# Other templates' turn markers, to name the template a text was rendered with.
OTHER_TEMPLATES = {"<|im_start|>": "ChatML (<|im_start|>)", "[INST]": "Llama-2/Mistral ([INST])",
                   "<start_of_turn>": "Gemma (<start_of_turn>)", "<|user|>": "Phi/Zephyr (<|user|>)"}


class ConversationError(ValueError):
    """A request that cannot be scored; the message tells the caller what to fix.

    `reason` is a short label for metrics: encoding, json, schema, too_large, too_long, no_prompt,
    special_token, not_templated.
    """

    def __init__(self, message: str, reason: str = "schema") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class InputLimits:
    max_bytes: int = 1 << 20
    max_messages: int = 256
    max_tokens: int = 8192
    # The original pipeline parses special-token text inside content ("<|eot_id|>…", "[PAD]"), which
    # lets a response move the positions ArmoRM reads (reward hacking). False keeps that parity.
    reject_special_tokens: bool = False
    # The model card's ArmoRMPipeline tokenizes with truncation=True, max_length=4096: keep the first max_tokens
    # tokens and read the positions in what is left. False (the default) rejects long conversations instead.
    truncate: bool = False


@dataclass(frozen=True)
class TokenizedConversation:
    input_ids: np.ndarray  # int64 [num_tokens]
    gate_position: int
    reward_position: int
    truncated_from: int | None = None  # the full length when the conversation was truncated to max_tokens

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])


def parse_messages(raw: bytes | str, limits: InputLimits = InputLimits()) -> list[dict[str, str]]:
    """Decode and validate one request's `messages` (a JSON list of {"role", "content"})."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if len(raw) > limits.max_bytes:
        raise ConversationError(f"messages is {len(raw)} bytes; the limit is {limits.max_bytes} bytes", "too_large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConversationError(f"messages is not valid UTF-8 (bad byte at offset {err.start})", "encoding") from None
    try:
        messages = json.loads(text, object_pairs_hook=distinct_keys("messages"))
    except RecursionError:
        raise ConversationError(
            "messages is nested too deeply to be a conversation; send a flat JSON list of {\"role\", \"content\"} "
            "objects", "json") from None
    except json.JSONDecodeError as err:
        raise ConversationError(
            f"messages is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
            'send a JSON list like [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]',
            "json",
        ) from None
    return validate_messages(messages, limits)


def first_repeated(items: Iterable[T]) -> T | None:
    """The first item seen twice (one pass: a hostile list of distinct items costs linear time), or None."""
    seen: set[T] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None


def distinct_keys(what: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    """A json.loads object hook for `what`'s JSON: one reading, a key given twice is refused (it is the last to
    Python, the first to other parsers such as rapidjson)."""
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        repeated = first_repeated(key for key, _ in pairs)
        if repeated is not None:
            raise ConversationError(f"{what} gives the key {repeated[:40]!r} twice in one object; give each key "
                                    "once", "json")
        return dict(pairs)

    return hook


def validate_messages(messages: Any, limits: InputLimits = InputLimits()) -> list[dict[str, str]]:
    if not isinstance(messages, list):
        raise ConversationError(
            f"messages must be a JSON list of {{\"role\", \"content\"}} objects, got a JSON {json_kind(messages)}"
        )
    if not messages:
        raise ConversationError("messages is an empty list; send at least a user turn and an assistant turn")
    if len(messages) > limits.max_messages:
        raise ConversationError(f"messages has {len(messages)} turns; the limit is {limits.max_messages}", "too_large")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ConversationError(f"messages[{index}] must be an object with role and content, got a JSON "
                                    f"{json_kind(message)}")
        for key in ("role", "content"):
            if key not in message:
                raise ConversationError(f"messages[{index}] has no {key!r} field")
            if not isinstance(message[key], str):
                raise ConversationError(f"messages[{index}].{key} must be a string, got a JSON "
                                        f"{json_kind(message[key])}")
            _check_encodable(message[key], f"messages[{index}].{key}")
        if message["role"] not in ROLES:
            raise ConversationError(
                f"messages[{index}].role is {message['role']!r}; use one of {', '.join(ROLES)}"
            )
    if messages[-1]["role"] != "assistant":
        raise ConversationError(
            f"the last message must be the assistant response to score, got role {messages[-1]['role']!r}"
        )
    if len(messages) < 2:
        raise ConversationError("messages holds only the assistant response; add the prompt (a user turn) before it")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _check_encodable(text: str, where: str) -> None:
    """JSON's \\u escapes can spell a lone UTF-16 surrogate, which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ConversationError(
            f"{where} holds a lone UTF-16 surrogate (\\u{ord(text[err.start]):04x} at character {err.start}); "
            "a \\u escape from \\ud800 to \\udfff must pair a high with a low surrogate", "encoding") from None


def json_kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def find_gate_position(input_ids: Sequence[int] | np.ndarray, pattern: Sequence[int]) -> int:
    """Start index of the last occurrence of `pattern` (the <|eot_id|> that ends the prompt)."""
    ids = np.asarray(input_ids)
    width = len(pattern)
    if width == 0 or ids.shape[0] < width:
        raise ConversationError("token pattern not found: the conversation has no assistant turn after a prompt",
                                "no_prompt")
    windows = np.lib.stride_tricks.sliding_window_view(ids, width)
    hits = np.flatnonzero((windows == np.asarray(pattern)).all(axis=1))
    if hits.size == 0:
        raise ConversationError("token pattern not found: the conversation has no assistant turn after a prompt",
                                "no_prompt")
    return int(hits[-1])


def find_reward_position(input_ids: Sequence[int] | np.ndarray, pad_token_id: int) -> int:
    """ArmoRM's rule: the token before the first pad, modulo the length (no pad: the last token)."""
    ids = np.asarray(input_ids)
    pads = np.flatnonzero(ids == pad_token_id)
    first_pad = int(pads[0]) if pads.size else 0
    return (first_pad - 1) % int(ids.shape[0])


# How the scored ids begin. TEMPLATE_BOS: the chat template's tokens as rendered, BOS included, nothing added
# (ArmoRM's card: apply_chat_template(tokenize=True)). RETOKENIZE_BOS: the template's text without its leading BOS,
# then the tokenizer with its defaults (Bradley–Terry models: RLHFlow's pipeline, Skywork's README).
TEMPLATE_BOS, RETOKENIZE_BOS = "template", "retokenize"
BOS_RULES = (TEMPLATE_BOS, RETOKENIZE_BOS)


class ConversationTokenizer:
    """Chat template + tokenization + positions, with the limits enforced.

    `tokenizer` is a Hugging Face tokenizer loaded from the checkpoint (it carries the chat template).
    """

    def __init__(self, tokenizer: Any, limits: InputLimits = InputLimits(), bos_rule: str = TEMPLATE_BOS) -> None:
        if bos_rule not in BOS_RULES:
            raise ValueError(f"bos_rule {bos_rule!r}: use one of {', '.join(BOS_RULES)}")
        self.tokenizer = tokenizer
        self.limits = limits
        self.bos_rule = bos_rule
        self.gate_pattern: list[int] = list(tokenizer.encode(GATE_PATTERN_TEXT, add_special_tokens=False))
        self.pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else -1)
        special = sorted({t.content for t in tokenizer.added_tokens_decoder.values() if t.special}, key=len,
                         reverse=True)
        self.special_pattern = re.compile("|".join(map(re.escape, special))) if special else None

    def special_token_error(self, messages: list[dict[str, str]]) -> ConversationError | None:
        if not self.limits.reject_special_tokens or self.special_pattern is None:
            return None
        for index, message in enumerate(messages):
            found = self.special_pattern.search(message["content"])
            if found:
                return ConversationError(
                    f"messages[{index}].content contains the special token {found.group()!r}; "
                    "special tokens are not allowed in content on this server", "special_token")
        return None

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def template_text(self, messages: list[dict[str, str]]) -> str | ConversationError:
        return self.special_token_error(messages) or self.render(messages)

    def parse_text(self, raw: bytes | str) -> str:
        """One already chat-templated conversation (what RLHF trainers send: prompt + response decoded with special
        tokens kept) → the text the chat template renders for the same messages, which is what gets tokenized.

        The text is read back into its turns and rendered again, so it scores exactly as `messages` would: padding
        runs before <|begin_of_text|> and after the last turn go (a policy's left and right padding, eos), each
        turn's content is trimmed as the template trims it (a generation cut at a length limit may end in
        whitespace), and an unclosed last turn is closed."""
        if self.limits.reject_special_tokens:  # in templated text, a turn forged inside content looks like a turn
            raise ConversationError("this server refuses special tokens inside content (reject_special_tokens), "
                                    "which templated text cannot show apart from its turns: send messages instead",
                                    "special_token")
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogatepass")
        if len(raw) > self.limits.max_bytes:
            raise ConversationError(f"text is {len(raw)} bytes; the limit is {self.limits.max_bytes} bytes",
                                    "too_large")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConversationError(f"text is not valid UTF-8 (bad byte at offset {err.start})", "encoding") from None
        return self.render(self.text_turns(text))

    def padding_tokens(self) -> tuple[str, ...]:
        """What a policy pads with or ends a generation with: its pad token, eos, end of turn, Llama-3.1's pad."""
        found = (self.tokenizer.pad_token, self.tokenizer.eos_token, END_OF_TURN, "<|end_of_text|>",
                 "<|finetune_right_pad_id|>")
        return tuple(dict.fromkeys(t for t in found if t))

    def text_turns(self, text: str) -> list[dict[str, str]]:
        """Templated text → its messages, or a ConversationError that says what is wrong with it."""
        bos = self.tokenizer.bos_token or "<|begin_of_text|>"  # Llama-3's, for a tokenizer config that omits it
        padding = self.padding_tokens()
        start = 0
        while (token := next((t for t in padding if text.startswith(t, start)), None)) is not None:
            start += len(token)  # left padding before the conversation
        end = len(text)
        while (token := next((t for t in padding if text.endswith(t, start, end)), None)) is not None:
            end -= len(token)  # right padding after it (and the last turn's own end, closed again on rendering)
        text = text[start:end]
        if not text.startswith(bos):
            other = next((name for marker, name in OTHER_TEMPLATES.items() if marker in text), None)
            if other is not None:
                raise ConversationError(f"text is in the {other} chat template; ArmoRM reads Llama-3's: {bos}, then "
                                        f"per turn {TURN_SHAPE} (render with this model's tokenizer, or send "
                                        "messages)", "not_templated")
            if self.special_pattern is not None and not self.special_pattern.search(text):
                raise ConversationError(
                    f"text holds no special tokens: it looks decoded with skip_special_tokens=True, which erases the "
                    f"turns ArmoRM reads; decode with skip_special_tokens=False so it starts with {bos}",
                    "not_templated")
            raise ConversationError(
                f"text must start with {bos}: send the whole conversation as the chat template renders it "
                "(apply_chat_template(messages, tokenize=False)), special tokens kept", "not_templated")
        if text.count(bos) > 1:
            raise ConversationError(f"text holds {bos} {text.count(bos)} times; send one conversation per row",
                                    "not_templated")
        turns, position = [], len(bos)
        while position < len(text):
            turn = LLAMA3_TURN.match(text, position)
            if turn is None:
                raise ConversationError(
                    f"text is not in Llama-3's chat template at character {position} ({text[position:position + 40]!r}"
                    f"): each turn must be {TURN_SHAPE}", "not_templated")
            if turn["role"] not in ROLES:
                raise ConversationError(f"text turn {len(turns)} has role {turn['role']!r}; use one of "
                                        f"{', '.join(ROLES)}")
            turns.append({"role": turn["role"], "content": turn["content"]})
            position = turn.end()
        if len(turns) > self.limits.max_messages:
            raise ConversationError(f"text has {len(turns)} turns; the limit is {self.limits.max_messages}",
                                    "too_large")
        if len(turns) < 2 or turns[-1]["role"] != "assistant":
            raise ConversationError(
                "text has no assistant turn after a prompt: it must hold "
                + repr(GATE_PATTERN_TEXT) + " before the response to score", "no_prompt")
        return turns

    def tokenize_texts(
        self, texts: Sequence[str | ConversationError]
    ) -> list[TokenizedConversation | ConversationError]:
        """Tokenize templated texts together; an error passed in (or found) is returned in its slot, not raised."""
        valid = [text for text in texts if not isinstance(text, ConversationError)]
        retokenize = self.bos_rule == RETOKENIZE_BOS
        if retokenize:  # the template's BOS text goes; the tokenizer's defaults add BOS if its post-processor does
            bos = self.tokenizer.bos_token or ""
            valid = [text[len(bos):] if bos and text.startswith(bos) else text for text in valid]
        # TEMPLATE_BOS: the template already holds <|begin_of_text|>; adding special tokens would double it.
        encoded = iter(self.tokenizer(valid, add_special_tokens=retokenize)["input_ids"] if valid else [])
        return [text if isinstance(text, ConversationError) else self._positions(next(encoded)) for text in texts]

    def tokenize_batch(
        self, batch: Sequence[list[dict[str, str]]]
    ) -> list[TokenizedConversation | ConversationError]:
        """Tokenize validated conversations together; a failure is returned in its slot, not raised."""
        return self.tokenize_texts([self.template_text(messages) for messages in batch])

    def tokenize(self, messages: list[dict[str, str]]) -> TokenizedConversation:
        result = self.tokenize_batch([messages])[0]
        if isinstance(result, ConversationError):
            raise result
        return result

    def _positions(self, ids: list[int]) -> TokenizedConversation | ConversationError:
        limit = self.limits.max_tokens
        truncated_from = None
        if len(ids) > limit and not self.limits.truncate:
            return ConversationError(
                f"the conversation is {len(ids)} tokens long; the limit is {limit} tokens "
                "(shorten the prompt or the response)",
                "too_long",
            )
        input_ids = np.asarray(ids, dtype=np.int64)
        try:
            gate = find_gate_position(input_ids, self.gate_pattern)
        except ConversationError as err:
            return err
        if len(ids) > limit:
            prompt_end = gate + len(self.gate_pattern)
            if prompt_end > limit:  # the card's pipeline would read the gate at an earlier turn, or fail
                return ConversationError(
                    f"the prompt ends at token {prompt_end} (its last assistant header), past the limit of {limit} "
                    "tokens: truncation keeps only the start of the response, never cuts the prompt (shorten the "
                    "prompt)", "too_long")
            truncated_from, input_ids = len(ids), input_ids[:limit]
        return TokenizedConversation(input_ids, gate, find_reward_position(input_ids, self.pad_token_id),
                                     truncated_from)


def name_row(err: ConversationError, row: int, rows: int) -> ConversationError:
    """In a request of several conversations, say which one failed (the whole request fails with it)."""
    if rows == 1:
        return err
    return ConversationError(f"row {row} of {rows}: {err} (the request fails as a whole; fix or drop that row)",
                             err.reason)


def parse_row(raw: bytes, limits: InputLimits, row: int, rows: int) -> list[dict[str, str]]:
    try:
        return parse_messages(raw, limits)
    except ConversationError as err:
        raise name_row(err, row, rows) from None


def row_text(tokenizer: ConversationTokenizer, raw: bytes, form: str, row: int, rows: int) -> str:
    """One row of either form → the templated text to tokenize."""
    try:
        if form == TEXT_FORM:
            return tokenizer.parse_text(raw)
        text = tokenizer.template_text(parse_messages(raw, tokenizer.limits))
        if isinstance(text, ConversationError):
            raise text
        return text
    except ConversationError as err:
        raise name_row(err, row, rows) from None


def tokenize_requests(
    tokenizer: ConversationTokenizer, requests: Sequence[Sequence[bytes]], forms: Sequence[str] | None = None
) -> tuple[list[dict[str, np.ndarray] | ConversationError], int]:
    """Each request's raw rows (`messages` JSON, or templated `text` where its form says so) → its tokenizer
    outputs, or the error that fails it alone; and how many conversations were truncated to max_tokens.

    All valid conversations of the dynamic batch are tokenized in one call. A request with several
    rows gets its rows right-padded with the pad token to a common length (positions stay exact).
    """
    forms = forms or [MESSAGES_FORM] * len(requests)
    parsed: list[list[str] | ConversationError] = []
    for rows, form in zip(requests, forms):
        try:
            parsed.append([row_text(tokenizer, raw, form, row, len(rows)) for row, raw in enumerate(rows)])
        except ConversationError as err:
            parsed.append(err)
    flat = [text for item in parsed if not isinstance(item, ConversationError) for text in item]
    tokenized = iter(tokenizer.tokenize_texts(flat))
    results: list[dict[str, np.ndarray] | ConversationError] = []
    truncated = 0
    for item in parsed:
        if isinstance(item, ConversationError):
            results.append(item)
            continue
        conversations = [next(tokenized) for _ in item]
        bad = next((row for row, c in enumerate(conversations) if isinstance(c, ConversationError)), None)
        if bad is not None:
            results.append(name_row(conversations[bad], bad, len(conversations)))
            continue
        longest = max(c.num_tokens for c in conversations)
        input_ids = np.full((len(conversations), longest), tokenizer.pad_token_id, dtype=np.int64)
        for row, conversation in enumerate(conversations):
            input_ids[row, : conversation.num_tokens] = conversation.input_ids
        results.append({
            INPUT_IDS.name: input_ids,
            GATE_POSITION.name: np.array([[c.gate_position] for c in conversations], dtype=np.int64),
            REWARD_POSITION.name: np.array([[c.reward_position] for c in conversations], dtype=np.int64),
            NUM_TOKENS.name: np.array([[c.num_tokens] for c in conversations], dtype=np.int64),
        })
        truncated += sum(c.truncated_from is not None for c in conversations)
    return results, truncated
