"""A mixture of reward models against its members called separately, in one run on the same conversations.

Writes small random checkpoints (ArmoRM and a Bradley–Terry model, FsfairX's shape) into one repository with the
mixture `both` (armorm=1, fsfairx=1), serves it, then in alternating rounds scores every conversation (a) with one
call to the mixture and (b) with one call to each member, concurrently, combining the scores in the client. Both
keep the same number of conversations in flight. Prints conversations/s of each, their ratio, and checks that both
give the same sums.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tqdm import tqdm

from armorm.testing.random_checkpoint import write_random_bradley_terry, write_random_checkpoint
from armorm.testing.serve_process import ServeProcess
from armorm.testing.workloads import mix
from armorm_client import contract

MEMBERS = ("armorm", "fsfairx")


def build(scratch: Path) -> Path:
    from armorm_export.mixture import write_mixture
    from armorm_export.repository import ExportOptions, export_repository

    repository = scratch / "repository"
    if (repository / contract.MANIFEST).is_file():
        return repository
    options = ExportOptions(onnx=False, max_tokens=2048)
    export_repository(write_random_checkpoint(scratch / "armorm", seed=1), repository, options)
    export_repository(write_random_bradley_terry(scratch / "fsfairx", seed=2), repository, options, name="fsfairx")
    write_mixture(repository, "both", dict.fromkeys(MEMBERS, 1.0))
    return repository


def score(client: grpcclient.InferenceServerClient, model: str, conversation: list[dict[str, str]]) -> float:
    tensor = grpcclient.InferInput(contract.MESSAGES.name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[json.dumps(conversation).encode()]], dtype=object))
    result = client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput(contract.SCORE.name)])
    return float(result.as_numpy(contract.SCORE.name).reshape(-1)[0])


def run(url: str, conversations: list, concurrency: int, separately: bool) -> tuple[float, list[float]]:
    """(seconds, sums): `concurrency` conversations in flight, each one mixture call or one call per member."""
    clients = [grpcclient.InferenceServerClient(url) for _ in range(concurrency)]
    members = ThreadPoolExecutor(concurrency * len(MEMBERS))

    def one(index: int) -> float:
        client = clients[index % concurrency]
        if not separately:
            return score(client, "both", conversations[index])
        return sum(members.map(lambda m: score(client, m, conversations[index]), MEMBERS))

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        sums = list(pool.map(one, range(len(conversations))))
    elapsed = time.perf_counter() - start
    members.shutdown()
    for client in clients:
        client.close()
    return elapsed, sums


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=Path("build/bench-mixture"))
    parser.add_argument("--conversations", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, nargs=2, default=(64, 512), metavar=("LOW", "HIGH"))
    args = parser.parse_args()
    repository = build(args.scratch)
    conversations = mix(args.conversations, *args.tokens, seed=7)
    rates: dict[str, list[float]] = {"mixture": [], "separately": []}
    with ServeProcess(repository, args.scratch / "server") as server:
        run(server.grpc_url, conversations[:args.concurrency], args.concurrency, False)  # warm both paths
        run(server.grpc_url, conversations[:args.concurrency], args.concurrency, True)
        for _ in tqdm(range(args.rounds), desc="rounds", file=sys.stderr):
            for name in rates:
                seconds, sums = run(server.grpc_url, conversations, args.concurrency, name == "separately")
                rates[name].append(len(conversations) / seconds)
                if name == "mixture":
                    mixture_sums = sums
                else:
                    assert np.allclose(sums, mixture_sums, atol=1e-4), "the mixture's sum is its members' sum"
    print(f"{len(conversations)} conversations of {args.tokens[0]}-{args.tokens[1]} tokens, {args.concurrency} in "
          f"flight, {args.rounds} rounds (median; min-max)")
    for name, values in rates.items():
        print(f"  {name:>10}: {statistics.median(values):7.1f} conversations/s  ({min(values):.1f}-{max(values):.1f})")
    ratio = statistics.median(rates["mixture"]) / statistics.median(rates["separately"])
    print(f"  mixture / members called separately: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
