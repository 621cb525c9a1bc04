"""Triton glue for a mixture of reward models: the members are called concurrently (BLS) by
armorm.serving.mixture_step; the combination is armorm.model.mixture."""

import triton_python_backend_utils as pb

from armorm.model.mixture import MIXTURE_FILE, Mixture
from armorm.serving.mixture_step import MixtureStep, text_reader
from armorm.serving.triton_glue import ModelContext
from armorm_client.contract import TOKENIZER_DIR


class TritonPythonModel:
    def initialize(self, args):
        context = ModelContext.from_args(args)
        form = context.parameter("form", "messages")
        reader = text_reader(context.version_dir / TOKENIZER_DIR) if form == "text" else None
        self.step = MixtureStep(pb, Mixture.load(context.version_dir / MIXTURE_FILE), form, reader)

    async def execute(self, requests):
        return await self.step.respond(requests)
