"""OpenRLHF's way in against the client library's, through one running armorm-serve, on the same conversations:
single-sample POST /get_reward calls (what current OpenRLHF sends, one per generated sample) at a concurrency,
calls of many queries each (what older OpenRLHF sends, a batch split across URLs) one after another, and
`ArmoRMClient.score_batch` with the same number in flight, in alternating rounds; prints each and their ratios.
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


async def openrlhf_calls(http_url: str, queries: list[str], concurrency: int, per_call: int = 1,
                         ) -> tuple[float, list[float]]:
    """(seconds, rewards): POSTs of `per_call` queries each, `concurrency` calls in flight, as OpenRLHF sends them."""
    queue = [(start, queries[start:start + per_call]) for start in range(0, len(queries), per_call)][::-1]
    rewards: list[float] = [0.0] * len(queries)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            while queue:
                start, chunk = queue.pop()
                document = {"query": chunk, "prompts": [""] * len(chunk), "labels": [""] * len(chunk)}
                async with session.post(f"http://{http_url}/get_reward", json=document) as response:
                    response.raise_for_status()
                    rewards[start:start + len(chunk)] = (await response.json())["rewards"]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, rewards


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("repository", type=Path, nargs="?", default=Path("build/repository"))
    parser.add_argument("--conversations", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--per-call", type=int, default=32,
                        help="queries in each call of the many-query path (concurrency / per-call calls in flight)")
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
        single, many = "/get_reward, 1 per call", f"/get_reward, {args.per_call} per call"
        paths = {single: (args.concurrency, 1), many: (max(1, args.concurrency // args.per_call), args.per_call)}
        timings: dict[str, list[float]] = {single: [], many: [], "armorm_client": []}
        with ArmoRMClient(server.grpc_url) as client:
            client.score_batch(conversations[:64], max_in_flight=16)  # warm-up
            expected = [s.score for s in client.score_batch(conversations, max_in_flight=args.concurrency)]
            for _ in tqdm(range(args.rounds), desc="rounds", file=sys.stderr):
                for path, (in_flight, per_call) in paths.items():
                    seconds, rewards = asyncio.run(openrlhf_calls(server.http_url, queries, in_flight, per_call))
                    worst = max(abs(a - b) for a, b in zip(rewards, expected, strict=True))
                    if worst > 1e-4:
                        raise SystemExit(f"{path} differs from the client's scores by {worst:.3g}")
                    timings[path].append(seconds)
                start = time.perf_counter()
                client.score_batch(conversations, max_in_flight=args.concurrency)
                timings["armorm_client"].append(time.perf_counter() - start)
    best = {name: len(conversations) / min(seconds) for name, seconds in timings.items()}
    print(f"{'path':<26} {'conversations/s':>16} {'/ armorm_client':>16}  (best of {args.rounds} rounds)")
    for name, rate in best.items():
        print(f"{name:<26} {rate:>16.1f} {rate / best['armorm_client']:>16.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
