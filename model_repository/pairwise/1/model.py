"""Triton glue for a pairwise preference model: tokenization in both orders, the backbone call and the two-row LM
head live in armorm.serving.pairwise_step and armorm.model.pairwise."""

import triton_python_backend_utils as pb

from armorm.model.checkpoint import load_tokenizer
from armorm.model.pairwise import ChoiceWeights
from armorm.serving.pairwise_step import PairwiseStep
from armorm.serving.triton_glue import ModelContext
from armorm_client.contract import CHOICE_WEIGHTS, TOKENIZER_DIR


class TritonPythonModel:
    def initialize(self, args):
        context = ModelContext.from_args(args)
        context.set_torch_threads(1)
        weights = ChoiceWeights.load(context.version_dir / CHOICE_WEIGHTS)
        self.step = PairwiseStep(pb, load_tokenizer(context.version_dir / TOKENIZER_DIR), weights,
                                 context.parameter("backbone", "pairwise_backbone"),
                                 context.int_parameter("max_tokens", 8192), context.int_parameter("max_bytes", 1 << 20))

    async def execute(self, requests):
        return await self.step.respond(requests)
