"""Pairwise preference: P(A ≻ B) from a served pairwise model (RLHFlow/pair-preference-model-LLaMA3-8B exported
under a name), and rankings of N responses built from it, e.g. to choose DPO pairs.

    from armorm_client.pairwise import PairwiseClient
    with PairwiseClient("localhost:8001", model="pair_pm") as judge:
        judge.preference("Capital of France?", "Paris.", "Lyon.")          # 0.93: P(A ≻ B), both orders averaged
        judge.rank("Capital of France?", ["Paris.", "Lyon.", "Nice."])     # Ranking(order=[0, 2, 1], ...)

Each preference costs two forwards of the 8B model (both orders). Ranking procedures:
- "tournament" (default; RLHFlow's advice, "linear in n"): single elimination, n − 1 matches, 2(n − 1) forwards;
  the order is by the round each response reached (the winner first), ties within a round by their match's P.
- "all_pairs": every pair once, n(n − 1)/2 matches, n(n − 1) forwards; the order is by the mean P of winning
  against all the others (the best and the worst of it make a DPO pair).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from armorm_client.client import InvalidConversationError, to_error
from armorm_client.contract import API_KEY_HEADER, PAIR, PREFERENCE
from armorm_client.result import ArmoRMScore

Prompt = str | Sequence[dict[str, str]]
PROCEDURES = ("tournament", "all_pairs")
MAX_ROWS = 64  # the pairwise model's max_batch_size: a request holds at most this many pairs


@dataclass(frozen=True)
class Ranking:
    order: list[int]  # indices into the responses, best first
    score: list[float]  # per response (input order): its round reached (tournament) or mean P of winning (all pairs)
    matches: list[tuple[int, int, float]] = field(default_factory=list)  # (a, b, P(a ≻ b)) as played
    forwards: int = 0  # forwards of the pairwise model: two per match

    @property
    def best(self) -> int:
        return self.order[0]

    @property
    def worst(self) -> int:
        return self.order[-1]


class PairwiseClient:
    def __init__(self, url: str = "localhost:8001", model: str = "pair_pm", timeout_s: float | None = 120.0,
                 api_key: str | None = None) -> None:
        self.model, self.timeout_s = model, timeout_s
        self.headers = {API_KEY_HEADER: api_key} if api_key else None
        self.client = grpcclient.InferenceServerClient(url)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> PairwiseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def preferences(self, pairs: Sequence[tuple[Prompt, str, str]]) -> list[float]:
        """P(a ≻ b) for each (prompt, a, b), in requests of at most MAX_ROWS pairs (the model's max_batch_size)."""
        return [p for start in range(0, len(pairs), MAX_ROWS) for p in self._preferences(pairs[start:start + MAX_ROWS])]

    def _preferences(self, pairs: Sequence[tuple[Prompt, str, str]]) -> list[float]:
        if not pairs:
            return []
        rows = [[json.dumps({"prompt": prompt if isinstance(prompt, str) else list(prompt), "response_a": a,
                             "response_b": b}).encode()] for prompt, a, b in pairs]
        tensor = grpcclient.InferInput(PAIR.name, [len(rows), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(rows, dtype=object))
        result = self.client.infer(self.model, [tensor], outputs=[grpcclient.InferRequestedOutput(PREFERENCE.name)],
                                   headers=self.headers, client_timeout=self.timeout_s)
        return [float(v) for v in result.as_numpy(PREFERENCE.name).reshape(-1)]

    def preference(self, prompt: Prompt, response_a: str, response_b: str) -> float:
        return self.preferences([(prompt, response_a, response_b)])[0]

    def rank(self, prompt: Prompt, responses: Sequence[str], procedure: str = "tournament") -> Ranking:
        if procedure not in PROCEDURES:
            raise ValueError(f"procedure {procedure!r}: use one of {', '.join(PROCEDURES)}")
        if len(responses) < 2:
            return Ranking(list(range(len(responses))), [0.0] * len(responses))
        return self._all_pairs(prompt, responses) if procedure == "all_pairs" else self._tournament(prompt, responses)

    def _all_pairs(self, prompt: Prompt, responses: Sequence[str]) -> Ranking:
        pairs = list(itertools.combinations(range(len(responses)), 2))
        values = self.preferences([(prompt, responses[a], responses[b]) for a, b in pairs])
        wins = np.zeros(len(responses))
        for (a, b), p in zip(pairs, values):
            wins[a] += p
            wins[b] += 1 - p
        mean = wins / (len(responses) - 1)
        order = sorted(range(len(responses)), key=lambda i: -mean[i])
        return Ranking(order, [float(m) for m in mean], [(a, b, p) for (a, b), p in zip(pairs, values)],
                       2 * len(pairs))

    def _tournament(self, prompt: Prompt, responses: Sequence[str]) -> Ranking:
        alive, rounds, margin = list(range(len(responses))), [0.0] * len(responses), [0.5] * len(responses)
        matches: list[tuple[int, int, float]] = []
        level = 0
        while len(alive) > 1:
            level += 1
            pairs = [(alive[i], alive[i + 1]) for i in range(0, len(alive) - 1, 2)]
            values = self.preferences([(prompt, responses[a], responses[b]) for a, b in pairs])
            winners = []
            for (a, b), p in zip(pairs, values):
                winner, loser = (a, b) if p >= 0.5 else (b, a)
                winners.append(winner)
                rounds[winner], margin[loser] = float(level), min(p, 1 - p)
                matches.append((a, b, p))
            alive = winners + ([alive[-1]] if len(alive) % 2 else [])  # a bye for the odd one out
            for index in alive:
                rounds[index] = float(level)
        order = sorted(range(len(responses)), key=lambda i: (-rounds[i], -margin[i]))
        return Ranking(order, rounds, matches, 2 * len(matches))


class PairwiseScores:
    """A pairwise model behind `armorm-score --pairs --pairwise`: each (chosen, rejected) request is answered as two
    scores, P(chosen ≻ rejected) and 1 − P, so a row's margin is 2P − 1 and accuracy counts P > 0.5. Requests go a
    window at a time in one call; a window that fails is retried row by row, so a bad row fails alone."""

    def __init__(self, judge: PairwiseClient) -> None:
        self.judge = judge

    def score_stream(self, requests: Iterable[Sequence[Sequence[dict[str, str]]] | Exception],
                     window: int = 64) -> Iterator[list[ArmoRMScore] | Exception]:
        buffer: list[Any] = []
        for request in requests:
            buffer.append(request)
            if len(buffer) >= window:
                yield from self._answer(buffer)
                buffer = []
        yield from self._answer(buffer)

    def _answer(self, buffer: list[Any]) -> Iterator[list[ArmoRMScore] | Exception]:
        buffer = [r if isinstance(r, Exception) else pair_or_error(r) for r in buffer]
        pairs = [None if isinstance(r, Exception) else r for r in buffer]
        try:
            values = iter(self.judge.preferences([p for p in pairs if p is not None]))
            answers: list[Any] = [r if p is None else next(values) for r, p in zip(buffer, pairs)]
        except InferenceServerException:
            answers = [r if p is None else self._one(p) for r, p in zip(buffer, pairs)]
        for answer in answers:
            yield answer if isinstance(answer, Exception) else [ArmoRMScore(answer), ArmoRMScore(1.0 - answer)]

    def _one(self, pair: tuple[Prompt, str, str]) -> float | Exception:
        try:
            return self.judge.preference(*pair)
        except InferenceServerException as err:
            return to_error(err)


def pair_or_error(request: Sequence[Sequence[dict[str, str]]]) -> tuple[Prompt, str, str] | Exception:
    try:
        return as_pair(*request)
    except (ValueError, TypeError, KeyError, IndexError) as err:
        return InvalidConversationError(f"this row is not a preference pair: {err}")


def as_pair(chosen: Sequence[dict[str, str]], rejected: Sequence[dict[str, str]]) -> tuple[Prompt, str, str]:
    """(prompt, chosen response, rejected response) of two conversations that share their prompt."""
    if list(chosen[:-1]) != list(rejected[:-1]):
        raise ValueError("a pairwise model compares two responses to one prompt: the rows' prompts differ")
    return list(chosen[:-1]), chosen[-1]["content"], rejected[-1]["content"]
