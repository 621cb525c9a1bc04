"""A mixture's requests, apart from its Triton glue (model_repository/mixture/1/model.py): the whole dynamic batch
goes to every member at once through Triton (BLS `async_exec`, one call per member), so the members run
concurrently and each batches with its own traffic; the scores are combined by armorm.model.mixture. A request
fails alone: with the first member's error, named (`fsfairx: ...`), or with what is wrong with its weights. `pb`
is the stub module, passed in."""

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
        """The whole batch in one call per member (each member batches it as one request): a mixture costs its
        members' forwards and two round trips, not one per request. A member that refuses that call is asked
        again request by request, so only the request at fault fails."""
        responses: list[Any] = [None] * len(requests)
        parsed: list[tuple[int, np.ndarray, np.ndarray]] = []  # (request index, weights, messages [rows, 1])
        for index, request in enumerate(requests):
            try:
                parsed.append((index, *self.read(request)))
            except (ValueError, RequestError) as err:  # ConversationError is a ValueError
                responses[index] = invalid_argument(self.pb, str(err))
            except Exception as err:  # noqa: BLE001 - a library choking on this request's content: it fails alone
                responses[index] = invalid_argument(self.pb, f"this request could not be read ({type(err).__name__}: "
                                                             f"{str(err)[:200]})")
        if parsed:
            rows = np.concatenate([messages for _, _, messages in parsed])
            try:
                together = await asyncio.gather(*(self.call(name, rows) for name in self.mixture.names))
            except Exception:  # noqa: BLE001 - a member unreachable for the batch: each request tries alone below
                together = None
            if together is not None and all(not answer.has_error() for answer in together):
                scores = np.stack([self.scores(answer) for answer in together], axis=1)
                offsets = np.cumsum([0] + [len(messages) for _, _, messages in parsed])
                for (index, weights, _), start, end in zip(parsed, offsets[:-1], offsets[1:]):
                    responses[index] = self.response(scores[start:end], weights)
            else:
                alone = await asyncio.gather(*(self.answer(weights, messages) for _, weights, messages in parsed))
                for (index, _, _), response in zip(parsed, alone):
                    responses[index] = response
        return responses

    def read(self, request: Any) -> tuple[np.ndarray, np.ndarray]:
        """(weights [K], messages [rows, 1] object array) of one request, or RequestError / ValueError."""
        weights = self.mixture.weights(self.request_weights(request))
        rows = bytes_items(input_array(self.pb, request, self.form))
        if not rows:
            raise RequestError("the request holds no rows; send at least one conversation")
        if self.read_text is not None:
            rows = [self.read_text(row).encode() for row in rows]
        return weights, np.array(rows, dtype=np.object_).reshape(-1, 1)

    async def call(self, member: str, messages: np.ndarray) -> Any:
        pb = self.pb
        request = pb.InferenceRequest(model_name=member, requested_output_names=[SCORE.name],
                                      inputs=[pb.Tensor(MESSAGES.name, messages)])
        return await request.async_exec()

    def scores(self, answer: Any) -> np.ndarray:
        return self.pb.get_output_tensor_by_name(answer, SCORE.name).as_numpy().reshape(-1)

    def response(self, member_scores: np.ndarray, weights: np.ndarray) -> Any:
        pb = self.pb
        member_scores = member_scores.astype(np.float32)  # [rows, K]
        score = self.mixture.combine(member_scores, weights).astype(np.float32).reshape(-1, 1)
        return pb.InferenceResponse(output_tensors=[pb.Tensor(SCORE.name, score),
                                                    pb.Tensor(MEMBER_SCORES.name, member_scores)])

    async def answer(self, weights: np.ndarray, messages: np.ndarray) -> Any:
        """One request alone: its own call to each member, the first member's error its answer."""
        try:
            answers = await asyncio.gather(*(self.call(name, messages) for name in self.mixture.names))
        except Exception as err:  # noqa: BLE001 - the member could not be reached: this request fails alone
            return unavailable(self.pb, f"a member of the mixture could not be called ({err}); retry")
        for name, answer in zip(self.mixture.names, answers):
            if answer.has_error():
                return self.member_error(name, answer.error())
        return self.response(np.stack([self.scores(answer) for answer in answers], axis=1), weights)

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
