"""A mixture's requests, apart from its Triton glue (model_repository/mixture/1/model.py): every member of every
request of the batch is called at once through Triton (BLS `async_exec`), so the members run concurrently and
each batches with its own traffic; the scores are combined by armorm.model.mixture. A request fails alone: with
the first member's error, named (`fsfairx: ...`), or with what is wrong with its weights. `pb` is the stub module,
passed in."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from armorm.model.conversation import ConversationError, ConversationTokenizer
from armorm.model.mixture import Mixture
from armorm.serving.codec import bytes_items
from armorm.serving.triton_glue import RequestError, input_array, internal_error, invalid_argument, unavailable
from armorm_client.contract import MEMBER_SCORES, MESSAGES, SCORE, TEXT

WEIGHTS_PARAMETER = "weights"  # a request's own weights: "name=weight,..." (members not named weigh 0)


def text_reader(tokenizer_dir: Path) -> Callable[[bytes], str]:
    """Templated text (Llama-3's chat template) → the messages JSON each member takes, or ConversationError."""
    from armorm.model.checkpoint import load_tokenizer

    tokenizer = ConversationTokenizer(load_tokenizer(tokenizer_dir))

    def read(raw: bytes) -> str:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConversationError(f"text is not valid UTF-8 (bad byte at offset {err.start})", "encoding") from None
        return json.dumps(tokenizer.text_turns(text), ensure_ascii=False)

    return read


class MixtureStep:
    def __init__(self, pb: Any, mixture: Mixture, form: str, read_text: Callable[[bytes], str] | None) -> None:
        if form not in (MESSAGES.name, TEXT.name) or (form == TEXT.name) != (read_text is not None):
            raise ValueError(f"form {form!r}: messages, or text with a reader")
        self.pb, self.mixture, self.form, self.read_text = pb, mixture, form, read_text

    async def respond(self, requests: Sequence[Any]) -> list[Any]:
        return list(await asyncio.gather(*(self.answer(request) for request in requests)))

    async def answer(self, request: Any) -> Any:
        pb = self.pb
        try:
            weights = self.mixture.weights(self.request_weights(request))
            rows = bytes_items(input_array(pb, request, self.form))
            if self.read_text is not None:
                rows = [self.read_text(row).encode() for row in rows]
        except (ValueError, RequestError) as err:  # ConversationError is a ValueError
            return invalid_argument(pb, str(err))
        messages = np.array(rows, dtype=np.object_).reshape(-1, 1)
        calls = [pb.InferenceRequest(model_name=name, requested_output_names=[SCORE.name],
                                     inputs=[pb.Tensor(MESSAGES.name, messages)]).async_exec()
                 for name in self.mixture.names]
        try:
            answers = await asyncio.gather(*calls)
        except Exception as err:  # noqa: BLE001 - the member could not be reached: this request fails alone
            return unavailable(pb, f"a member of the mixture could not be called ({err}); retry")
        scores = []
        for name, answer in zip(self.mixture.names, answers):
            if answer.has_error():
                return self.member_error(name, answer.error())
            scores.append(pb.get_output_tensor_by_name(answer, SCORE.name).as_numpy().reshape(-1))
        member_scores = np.stack(scores, axis=1).astype(np.float32)  # [rows, K]
        score = self.mixture.combine(member_scores, weights).astype(np.float32).reshape(-1, 1)
        return pb.InferenceResponse(output_tensors=[pb.Tensor(SCORE.name, score),
                                                    pb.Tensor(MEMBER_SCORES.name, member_scores)])

    def request_weights(self, request: Any) -> str | None:
        parameters = json.loads(request.parameters() or "{}")
        weights = parameters.get(WEIGHTS_PARAMETER)
        if weights is not None and not isinstance(weights, str):
            raise RequestError(f"the {WEIGHTS_PARAMETER} parameter is a string like 'armorm=1,fsfairx=0.5'")
        return weights

    def member_error(self, name: str, error: Any) -> Any:
        """The member's own status: INVALID_ARGUMENT for what the caller must fix, UNAVAILABLE to retry."""
        pb, message = self.pb, f"{name}: {error.message()}"
        code = error.code() if hasattr(error, "code") else None
        if code == pb.TritonError.INVALID_ARG:
            return invalid_argument(pb, message)
        if code == pb.TritonError.UNAVAILABLE:
            return unavailable(pb, message)
        return internal_error(pb, message)
