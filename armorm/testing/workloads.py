"""Sampled conversations for benchmarks and fidelity checks: a length mix and best-of-N groups (one prompt, N
responses), seeded so that `make bench`, the GPU check and tests/test_fidelity.py score the same inputs."""

from __future__ import annotations

import random

Conversation = list[dict[str, str]]

WORDS = ("the a reward model scores each answer for helpfulness safety style and truth while users "
         "ask about code cooking travel history science music sport weather money health").split()


def text_of(tokens: int, rng: random.Random) -> str:
    """`tokens` words (at least one) drawn from WORDS: about as many tokens."""
    return " ".join(rng.choice(WORDS) for _ in range(max(1, tokens)))


def mix(count: int, low: int, high: int, seed: int) -> list[Conversation]:
    """`count` one-turn conversations of `low`..`high` tokens, the prompt an eighth to a half of each."""
    rng = random.Random(seed)
    conversations = []
    for _ in range(count):
        total = rng.randint(low, high)
        prompt = rng.randint(max(8, total // 8), max(9, total // 2))
        conversations.append([{"role": "user", "content": text_of(prompt - 12, rng)},
                              {"role": "assistant", "content": text_of(total - prompt, rng)}])
    return conversations


def best_of_n(prompts: int, n: int, prompt_tokens: int, response_range: tuple[int, int],
              seed: int) -> list[tuple[Conversation, list[str]]]:
    """`prompts` groups of (prompt, `n` responses of `response_range` tokens)."""
    rng = random.Random(seed)
    groups = []
    for _ in range(prompts):
        prompt = [{"role": "user", "content": text_of(prompt_tokens - 10, rng)}]
        groups.append((prompt, [text_of(rng.randint(*response_range), rng) for _ in range(n)]))
    return groups


def flatten(groups: list[tuple[Conversation, list[str]]]) -> list[Conversation]:
    """best_of_n groups → one conversation per (prompt, response)."""
    return [prompt + [{"role": "assistant", "content": r}] for prompt, responses in groups for r in responses]
