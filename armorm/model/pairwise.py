"""A pairwise preference model: RLHFlow/pair-preference-model-LLaMA3-8B, a `LlamaForCausalLM` asked "A or B?".

As RLHFlow's own code computes it (pair-pm README, eval_reward_bench_pm.py): the prompt's messages rendered by a
plain template (roles by index parity, no BOS), placed with both responses in "[CONTEXT] ... [RESPONSE A] ...
[RESPONSE B] ... \\n", sent as one user turn through the model's own chat template with the BOS text removed and no
special tokens added; the next-token logits of "A" and "B" at the last position give P(first ≻ second) =
softmax(l_A, l_B)[0] (temperature 1). P(A ≻ B) is the mean over both orders, so position bias cancels. Only the two
rows of the LM head that these logits read are kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

ARCHITECTURE = "LlamaForCausalLM"
PLAIN_TEMPLATE = ("\n{% for message in messages %}{% if loop.index0 % 2 == 0 %}\n\n<turn> user\n "
                  "{{ message['content'] }}{% else %}\n\n<turn> assistant\n {{ message['content'] }}{% endif %}"
                  "{% endfor %}\n\n\n")
PROMPT_TEMPLATE = "[CONTEXT] {context} [RESPONSE A] {response_A} [RESPONSE B] {response_B} \n"
CHOICES = ("A", "B")
TEMPERATURE = 1.0
CHOICE_ROWS = "choice_rows"  # the saved tensor: the LM head's rows of "A" and "B" [2, hidden]


@dataclass(frozen=True)
class ChoiceWeights:
    rows: torch.Tensor  # [2, hidden] fp32: lm_head rows of "A", "B"
    token_ids: tuple[int, int]

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], tokenizer: Any, tied: bool) -> ChoiceWeights:
        ids = choice_token_ids(tokenizer)
        head = state["model.embed_tokens.weight"] if tied else state.get("lm_head.weight")
        if head is None:
            raise ValueError("a pairwise model needs lm_head.weight (or tie_word_embeddings)")
        return cls(head[list(ids)].float().contiguous(), ids)

    def save(self, path: Path) -> None:
        save_file({CHOICE_ROWS: self.rows, "token_ids": torch.tensor(self.token_ids)}, str(path))

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu") -> ChoiceWeights:
        tensors = load_file(str(path))
        return cls(tensors[CHOICE_ROWS].to(device), tuple(int(i) for i in tensors["token_ids"]))  # type: ignore[arg-type]


def choice_token_ids(tokenizer: Any) -> tuple[int, int]:
    """The ids of "A" and "B" as the authors' code takes them: the first token of each, no special tokens."""
    first, second = (tokenizer.encode(choice, add_special_tokens=False)[0] for choice in CHOICES)
    return int(first), int(second)


def render_context(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt's turns in the plain template (with the tokenizer's own Jinja settings, as apply_chat_template)."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, chat_template=PLAIN_TEMPLATE)


def order_ids(tokenizer: Any, context: str, first: str, second: str) -> list[int]:
    """The ids of one order: `first` as response A, `second` as B."""
    prompt = PROMPT_TEMPLATE.format(context=context, response_A=first, response_B=second)
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False)
    if tokenizer.bos_token:
        text = text.replace(tokenizer.bos_token, "")
    return list(tokenizer.encode(text, add_special_tokens=False))


def pair_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]], response_a: str, response_b: str,
             ) -> tuple[list[int], list[int]]:
    """Both orders' ids: (A first, B first)."""
    context = render_context(tokenizer, messages)
    return order_ids(tokenizer, context, response_a, response_b), order_ids(tokenizer, context, response_b, response_a)


def first_preferred(logits: torch.Tensor) -> torch.Tensor:
    """[n, 2] logits of "A", "B" → [n] P(the response shown first ≻ the second), temperature 1."""
    return torch.softmax(logits.float() / TEMPERATURE, dim=-1)[:, 0]


def preference(a_first: float, b_first: float) -> float:
    """P(A ≻ B), the mean over both orders: a_first = P(first ≻ second) with A first, b_first with B first."""
    value = (a_first + (1.0 - b_first)) / 2
    return value if math.isfinite(value) else float("nan")
