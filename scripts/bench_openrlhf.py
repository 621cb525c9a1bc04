"""OpenRLHF's way in against the client library's, through one running armorm-serve, on the same conversations:
single-sample POST /get_reward calls (what current OpenRLHF sends, one per generated sample) at a concurrency,
and `ArmoRMClient.score_batch` with the same number in flight, in alternating rounds; prints both and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiohttp
from tqdm import tqdm

from armorm.testing.serve_process import ServeProcess
from armorm.testing.workloads import mix
from armorm_client import ArmoRMClient


async def openrlhf_calls(http_url: str, queries: list[str], concurrency: int) -> tuple[float, list[float]]:
    """(seconds, rewards): one POST per query, `concurrency` in flight, as OpenRLHF's agent sends them."""
    queue = list(enumerate(queries))[::-1]
    rewards: list[float] = [0.0] * len(queries)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            while queue:
                index, query = queue.pop()
                document = {"query": [query], "prompts": [""], "labels": [""]}
                async with session.post(f"http://{http_url}/get_reward", json=document) as response:
                    response.raise_for_status()
                    rewards[index] = (await response.json())["rewards"][0]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, rewards


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("repository", type=Path, nargs="?", default=Path("build/repository"))
    parser.add_argument("--conversations", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, nargs=2, default=(64, 512), metavar=("LOW", "HIGH"))
    args = parser.parse_args()
    from transformers import AutoTokenizer

    conversations = mix(args.conversations, *args.tokens, seed=7)
    with ServeProcess(args.repository, Path("build/bench-openrlhf")) as server:
        tokenizer = AutoTokenizer.from_pretrained(str(args.repository / "armorm_tokenizer" / "1" / "tokenizer"))
        queries = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
        print(f"{server.http_url} (HTTP) and {server.grpc_url} (gRPC); {len(conversations)} conversations of "
              f"{args.tokens[0]}-{args.tokens[1]} tokens, concurrency {args.concurrency}, {args.rounds} rounds",
              file=sys.stderr)
        timings: dict[str, list[float]] = {"openrlhf /get_reward": [], "armorm_client": []}
        with ArmoRMClient(server.grpc_url) as client:
            client.score_batch(conversations[:64], max_in_flight=16)  # warm-up
            expected = [s.score for s in client.score_batch(conversations, max_in_flight=args.concurrency)]
            for _ in tqdm(range(args.rounds), desc="rounds", file=sys.stderr):
                seconds, rewards = asyncio.run(openrlhf_calls(server.http_url, queries, args.concurrency))
                worst = max(abs(a - b) for a, b in zip(rewards, expected))
                if worst > 1e-4:
                    raise SystemExit(f"/get_reward differs from the client's scores by {worst:.3g}")
                timings["openrlhf /get_reward"].append(seconds)
                start = time.perf_counter()
                client.score_batch(conversations, max_in_flight=args.concurrency)
                timings["armorm_client"].append(time.perf_counter() - start)
    best = {name: len(conversations) / min(seconds) for name, seconds in timings.items()}
    print(f"{'path':<22} {'conversations/s':>16}  (best of {args.rounds} rounds)")
    for name, rate in best.items():
        print(f"{name:<22} {rate:>16.1f}")
    print(f"openrlhf/client throughput ratio {best['openrlhf /get_reward'] / best['armorm_client']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
