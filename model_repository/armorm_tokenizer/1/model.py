"""Triton glue for the tokenizer step: validation, chat template, token ids and positions live in
armorm.conversation; a bad request fails alone with INVALID_ARGUMENT. As the pipeline's entry it
also refuses new requests (UNAVAILABLE) once the launcher drains the server (armorm.drain)."""

from collections import Counter

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
            reject_special_tokens=context.bool_parameter("reject_special_tokens", False),
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
        responses, rejected, admitted = [], Counter(), []
        for row in rows:
            result = row if isinstance(row, RequestError) else next(tokenized)
            if isinstance(result, (RequestError, ConversationError)):
                rejected[getattr(result, "reason", "input")] += 1
                responses.append(invalid_argument(pb, str(result)))
            else:
                admitted.append(result["num_tokens"])
                responses.append(tensors_response(pb, result))
        self.count(rejected, admitted)
        return responses

    def count(self, rejected, admitted):
        """Once per batch: each metric update is a round trip to the server process."""
        for reason, number in rejected.items():
            self.metrics.rejected.add(number, reason=reason)
        if admitted:
            self.metrics.admitted.add(len(admitted))
            self.metrics.conversations.add(sum(len(n) for n in admitted))
            self.metrics.tokens.add(int(sum(n.sum() for n in admitted)))

    def refuse(self, requests):
        self.metrics.refused_draining.add(len(requests))
        return [unavailable(pb, DRAINING_MESSAGE) for _ in requests]
