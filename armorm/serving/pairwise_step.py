"""A pairwise model's requests, apart from its Triton glue (model_repository/pairwise/1/model.py): each pair is
tokenized in both orders (armorm.model.pairwise), every order of every request goes to the model's backbone at once
through Triton (BLS `async_exec`, batched there with all other traffic), and the two LM-head rows it keeps turn
the last hidden state into P(A ≻ B). A request fails alone, with INVALID_ARGUMENT saying what to fix. `pb` is the
stub module, passed in."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from armorm.model.conversation import ConversationError, distinct_keys
from armorm.model.pairwise import ChoiceWeights, first_preferred, pair_ids, preference
from armorm.serving.codec import bytes_items
from armorm.serving.triton_glue import RequestError, input_array, internal_error, invalid_argument, unavailable
from armorm_client.contract import GATE_POSITION, INPUT_IDS, PAIR, PREFERENCE, REWARD_HIDDEN, REWARD_POSITION


def parse_pair(raw: bytes, max_bytes: int) -> tuple[list[dict[str, str]], str, str]:
    """{"prompt": messages or text, "response_a": text, "response_b": text} → (prompt messages, a, b)."""
    if len(raw) > max_bytes:
        raise RequestError(f"the pair is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        document = json.loads(raw, object_pairs_hook=distinct_keys("pair"))
    except ConversationError as err:
        raise RequestError(str(err)) from None
    except (ValueError, RecursionError):
        raise RequestError('pair must be JSON like {"prompt": "...", "response_a": "...", "response_b": "..."}'
                           ) from None
    if not isinstance(document, dict):
        raise RequestError('pair must be a JSON object with "prompt", "response_a" and "response_b"')
    prompt, a, b = (document.get(key) for key in ("prompt", "response_a", "response_b"))
    if not isinstance(a, str) or not isinstance(b, str):
        raise RequestError('pair needs "response_a" and "response_b" as strings')
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not (isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt)):
        raise RequestError('pair needs "prompt": a string (one user turn) or a non-empty list of '
                           '{"role", "content"} strings')
    return [{"role": m["role"], "content": m["content"]} for m in prompt], a, b


class PairwiseStep:
    def __init__(self, pb: Any, tokenizer: Any, weights: ChoiceWeights, backbone: str, max_tokens: int,
                 max_bytes: int) -> None:
        self.pb, self.tokenizer, self.weights, self.backbone = pb, tokenizer, weights, backbone
        self.max_tokens, self.max_bytes = max_tokens, max_bytes

    async def respond(self, requests: Sequence[Any]) -> list[Any]:
        return list(await asyncio.gather(*(self.answer(request) for request in requests)))

    async def answer(self, request: Any) -> Any:
        pb = self.pb
        try:
            orders = []
            for row, raw in enumerate(bytes_items(input_array(pb, request, PAIR.name))):
                for ids in pair_ids(self.tokenizer, *parse_pair(raw, self.max_bytes)):
                    if len(ids) > self.max_tokens:
                        raise RequestError(f"row {row}: the pair is {len(ids)} tokens long in one order; the limit "
                                           f"is {self.max_tokens} tokens")
                    orders.append(ids)
            if not orders:
                raise RequestError("the request holds no rows; send at least one pair")
        except (RequestError, ValueError) as err:
            return invalid_argument(pb, str(err))
        except Exception as err:  # noqa: BLE001 - the tokenizer choking on this request's content: it fails alone
            return invalid_argument(pb, f"this pair could not be tokenized ({type(err).__name__}: {str(err)[:200]})")
        try:
            answers = await asyncio.gather(*(self.backbone_call(ids).async_exec() for ids in orders))
        except Exception as err:  # noqa: BLE001 - the backbone could not be reached: this request fails alone
            return unavailable(pb, f"the backbone could not be called ({err}); retry")
        failed = next((a for a in answers if a.has_error()), None)
        if failed is not None:
            return internal_error(pb, f"the backbone failed: {failed.error().message()}")
        hidden = np.concatenate([pb.get_output_tensor_by_name(a, REWARD_HIDDEN.name).as_numpy() for a in answers])
        logits = torch.from_numpy(hidden).float() @ self.weights.rows.T  # [2·rows, 2]: "A", "B"
        first = first_preferred(logits).numpy().reshape(-1, 2)  # per row: (A shown first, B shown first)
        values = np.array([[preference(float(a), float(b))] for a, b in first], dtype=np.float32)
        return pb.InferenceResponse(output_tensors=[pb.Tensor(PREFERENCE.name, values)])

    def backbone_call(self, ids: list[int]) -> Any:
        pb, last = self.pb, np.array([[len(ids) - 1]], dtype=np.int64)
        return pb.InferenceRequest(
            model_name=self.backbone, requested_output_names=[REWARD_HIDDEN.name],
            inputs=[pb.Tensor(INPUT_IDS.name, np.array([ids], dtype=np.int64)), pb.Tensor(GATE_POSITION.name, last),
                    pb.Tensor(REWARD_POSITION.name, last)])
