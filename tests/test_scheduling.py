"""No scheduler stalls: while a request waits for the tokenizer or the backbone, that model is running a batch.

Triton 2.51 turns off batch prefetching when a model has a queue policy; requests then waited up to 500 ms while the
backbone sat idle (seen here: 500.4 ms in 2 of 4 passes at concurrency 16). Read from Triton's own trace."""

import asyncio

import pytest

from armorm.testing.serve_process import ServeProcess
from armorm.testing.trace import longest_idle_wait_s, read_spans, trace_arguments, trace_files
from armorm.testing.workloads import mix
from armorm_client import AsyncArmoRMClient, contract

pytestmark = pytest.mark.integration
# Far above a batch's assembly (a few ms) and far below the 500 ms stall.
STALL_S = 0.2


async def passes(url: str, count: int, concurrency: int) -> None:
    conversations = mix(16, 256, 1024, seed=2)
    slots = asyncio.Semaphore(concurrency)
    async with AsyncArmoRMClient(url, timeout_s=120) as client:
        async def one(messages):
            async with slots:
                await client.score(messages)

        for _ in range(count):
            await asyncio.gather(*(one(m) for m in conversations))


def test_no_model_idles_while_a_request_waits_for_it(exported_repository, tmp_path):
    trace = tmp_path / "trace.json"
    with ServeProcess(exported_repository, tmp_path / "logs", extra_args=["--", *trace_arguments(trace)]) as server:
        asyncio.run(passes(server.grpc_url, count=8, concurrency=16))
    spans = read_spans(trace_files(trace))
    for model in (contract.TOKENIZER.name, contract.BACKBONE.name):
        assert sum(s.model == model for s in spans) == 8 * 16, f"every request to {model} traced"
        idle = longest_idle_wait_s(spans, model)
        assert idle < STALL_S, f"{model} sat idle {idle * 1e3:.0f} ms while a request waited for it"
