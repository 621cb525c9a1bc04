"""Triton glue for the tokenizer step: validation, chat template, token ids and positions live in
armorm.conversation; a bad request fails alone with INVALID_ARGUMENT. As the pipeline's entry it
also refuses new requests (UNAVAILABLE) once the launcher drains the server (armorm.drain)."""

import triton_python_backend_utils as pb

from armorm.checkpoint import load_tokenizer
from armorm.codec import bytes_items
from armorm.contract import TOKENIZER_DIR
from armorm.conversation import ConversationError, ConversationTokenizer, InputLimits, tokenize_requests
from armorm.drain import DRAINING_MESSAGE, draining
from armorm.metrics import TokenizerMetrics
from armorm.triton_glue import (
    ModelContext,
    RequestError,
    input_array,
    invalid_argument,
    tensors_response,
    unavailable,
)


class TritonPythonModel:
    def initialize(self, args):
        context = ModelContext.from_args(args)
        limits = InputLimits(
            max_bytes=context.int_parameter("max_bytes", InputLimits.max_bytes),
            max_messages=context.int_parameter("max_messages", InputLimits.max_messages),
            max_tokens=context.int_parameter("max_tokens", InputLimits.max_tokens),
            reject_special_tokens=context.parameter("reject_special_tokens", "false").lower() in ("1", "true", "yes"),
        )
        self.tokenizer = ConversationTokenizer(load_tokenizer(context.version_dir / TOKENIZER_DIR), limits)
        self.metrics = TokenizerMetrics(pb)

    def execute(self, requests):
        if draining():
            return self.refuse(requests)
        rows = []
        for request in requests:
            try:
                rows.append(bytes_items(input_array(pb, request, "messages")))
            except RequestError as err:
                rows.append(err)
        readable = [r for r in rows if not isinstance(r, RequestError)]
        tokenized = iter(tokenize_requests(self.tokenizer, readable))
        if draining():  # the drain began while this batch was tokenized: admit nothing it cannot count
            return self.refuse(requests)
        responses = []
        for row in rows:
            result = row if isinstance(row, RequestError) else next(tokenized)
            if isinstance(result, (RequestError, ConversationError)):
                self.metrics.rejected.add(1, reason=getattr(result, "reason", "input"))
                responses.append(invalid_argument(pb, str(result)))
            else:
                self.metrics.conversations.add(len(result["num_tokens"]))
                self.metrics.tokens.add(int(result["num_tokens"].sum()))
                self.metrics.admitted.add(1)
                responses.append(tensors_response(pb, result))
        return responses

    def refuse(self, requests):
        self.metrics.refused_draining.add(len(requests))
        return [unavailable(pb, DRAINING_MESSAGE) for _ in requests]
