"""The tokenizer step's batch work, apart from its Triton glue (model_repository/armorm_tokenizer/1/model.py):
which input form each request sent, one tokenizer call for the whole dynamic batch, per-request errors, and the
step's metrics counted once per batch. `pb` is the stub module, passed in."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from armorm.model.conversation import (
    MESSAGES_FORM,
    TEXT_FORM,
    ConversationError,
    ConversationTokenizer,
    tokenize_requests,
)
from armorm.serving.codec import bytes_items
from armorm.serving.metrics import TokenizerMetrics
from armorm.serving.triton_glue import RequestError, input_array, invalid_argument, tensors_response
from armorm_client.contract import MESSAGES, NUM_TOKENS, TEXT

# A request that fails even alone (answer_each) failed on its own content: the caller must change it.
UNPROCESSABLE = "unprocessable"
FORMS = {MESSAGES.name: MESSAGES_FORM, TEXT.name: TEXT_FORM}


def request_input(pb: Any, request: Any) -> tuple[str, str]:
    """The one of the two optional inputs the request sent, and its form: exactly one must be there."""
    sent = [name for name in FORMS if pb.get_input_tensor_by_name(request, name) is not None]
    if len(sent) != 1:
        raise RequestError(f"send exactly one of the inputs {MESSAGES.name!r} (JSON messages) or {TEXT.name!r} "
                           f"(the chat-templated conversation), got {' and '.join(map(repr, sent)) or 'neither'}")
    return sent[0], FORMS[sent[0]]


class TokenizerStep:
    def __init__(self, pb: Any, tokenizer: ConversationTokenizer) -> None:
        self.pb = pb
        self.tokenizer = tokenizer
        self.metrics = TokenizerMetrics(pb)

    def respond(self, requests: Sequence[Any]) -> list[Any]:
        pb = self.pb
        rows: list[list[bytes] | RequestError] = []
        forms = []
        for request in requests:
            try:
                name, form = request_input(pb, request)
                rows.append(bytes_items(input_array(pb, request, name)))
                forms.append(form)
            except RequestError as err:
                rows.append(err)
        readable = [r for r in rows if not isinstance(r, RequestError)]
        results, truncated = tokenize_requests(self.tokenizer, readable, forms)
        tokenized = iter(results)
        responses, rejected, admitted = [], Counter(), []
        for row in rows:
            result = row if isinstance(row, RequestError) else next(tokenized)
            if isinstance(result, (RequestError, ConversationError)):
                rejected[getattr(result, "reason", "input")] += 1
                responses.append(invalid_argument(pb, str(result)))
            else:
                admitted.append(result[NUM_TOKENS.name])
                responses.append(tensors_response(pb, result))
        self.count(rejected, admitted, truncated)
        return responses

    def unprocessable(self, pb: Any, err: Exception) -> Any:
        self.metrics.rejected.add(1, reason=UNPROCESSABLE)
        return invalid_argument(pb, f"this request's conversation could not be tokenized ({type(err).__name__}: "
                                    f"{str(err)[:200]}); check its text")

    def count(self, rejected: Counter, admitted: list, truncated: int) -> None:
        """Once per batch: each metric update is a round trip to the server process."""
        if truncated:
            self.metrics.truncated.add(truncated)
        for reason, number in rejected.items():
            self.metrics.rejected.add(number, reason=reason)
        if admitted:
            self.metrics.admitted.add(len(admitted))
            self.metrics.conversations.add(sum(len(n) for n in admitted))
            self.metrics.tokens.add(int(sum(n.sum() for n in admitted)))
