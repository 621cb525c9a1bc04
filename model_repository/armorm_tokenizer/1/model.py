"""Triton glue for the tokenizer step: validation, chat template, token ids and positions live in
armorm.model.conversation; a bad request fails alone with INVALID_ARGUMENT."""

from collections import Counter

import triton_python_backend_utils as pb

from armorm.model.checkpoint import load_tokenizer
from armorm.model.conversation import (
    MESSAGES_FORM,
    TEXT_FORM,
    ConversationError,
    ConversationTokenizer,
    InputLimits,
    tokenize_requests,
)
from armorm.serving.codec import bytes_items
from armorm.serving.metrics import TokenizerMetrics
from armorm.serving.triton_glue import (
    ModelContext,
    RequestError,
    answer_each,
    input_array,
    invalid_argument,
    tensors_response,
)
from armorm_client.contract import MESSAGES, NUM_TOKENS, TEXT, TOKENIZER_DIR

# A request that fails even alone (answer_each) failed on its own content: the caller must change it.
UNPROCESSABLE = "unprocessable"


def request_input(request):
    """The one of the two optional inputs the request sent, and its form: exactly one must be there."""
    sent = [name for name in (MESSAGES.name, TEXT.name) if pb.get_input_tensor_by_name(request, name) is not None]
    if len(sent) != 1:
        raise RequestError(f"send exactly one of the inputs {MESSAGES.name!r} (JSON messages) or {TEXT.name!r} "
                           f"(the chat-templated conversation), got {' and '.join(map(repr, sent)) or 'neither'}")
    return sent[0], {MESSAGES.name: MESSAGES_FORM, TEXT.name: TEXT_FORM}[sent[0]]


class TritonPythonModel:
    def initialize(self, args):
        context = ModelContext.from_args(args)
        limits = InputLimits(
            max_bytes=context.int_parameter("max_bytes", InputLimits.max_bytes),
            max_messages=context.int_parameter("max_messages", InputLimits.max_messages),
            max_tokens=context.int_parameter("max_tokens", InputLimits.max_tokens),
            reject_special_tokens=context.bool_parameter("reject_special_tokens", False),
            truncate=context.bool_parameter("truncate", False),
        )
        self.tokenizer = ConversationTokenizer(load_tokenizer(context.version_dir / TOKENIZER_DIR), limits)
        self.metrics = TokenizerMetrics(pb)

    def execute(self, requests):
        return answer_each(pb, requests, self.respond, self.unprocessable)

    def respond(self, requests):
        rows, forms = [], []
        for request in requests:
            try:
                name, form = request_input(request)
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

    def unprocessable(self, pb_module, err):
        self.metrics.rejected.add(1, reason=UNPROCESSABLE)
        return invalid_argument(pb_module, f"this request's conversation could not be tokenized ({type(err).__name__}: "
                                           f"{str(err)[:200]}); check its text")

    def count(self, rejected, admitted, truncated):
        """Once per batch: each metric update is a round trip to the server process."""
        if truncated:
            self.metrics.truncated.add(truncated)
        for reason, number in rejected.items():
            self.metrics.rejected.add(number, reason=reason)
        if admitted:
            self.metrics.admitted.add(len(admitted))
            self.metrics.conversations.add(sum(len(n) for n in admitted))
            self.metrics.tokens.add(int(sum(n.sum() for n in admitted)))
