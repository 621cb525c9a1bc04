"""Triton glue for the tokenizer step: validation, chat template, token ids and positions live in
armorm.model.conversation, the batch work in armorm.serving.tokenizer_step; a bad request fails alone with
INVALID_ARGUMENT."""

import triton_python_backend_utils as pb

from armorm.model.checkpoint import load_tokenizer
from armorm.model.conversation import TEMPLATE_BOS, ConversationTokenizer, InputLimits
from armorm.serving.tokenizer_step import TokenizerStep
from armorm.serving.triton_glue import ModelContext, answer_each
from armorm_client.contract import TOKENIZER_DIR


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
        tokenizer = load_tokenizer(context.version_dir / TOKENIZER_DIR)
        bos_rule = context.parameters.get("bos_rule", TEMPLATE_BOS)
        self.step = TokenizerStep(pb, ConversationTokenizer(tokenizer, limits, bos_rule))

    def execute(self, requests):
        return answer_each(pb, requests, self.step.respond, self.step.unprocessable)
