"""What the gateway costs: the same requests to one running armorm-serve, through the gateway (its public gRPC
port) and straight to tritonserver's private Unix socket, in alternating rounds; prints both and their ratio.

The default small random model makes the backbone cheap, so per-request overhead shows as much as it can; with
the 8B model on a GPU the backbone dominates and the ratio moves toward 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from armorm.launcher.processes import process_group
from armorm.testing.serve_process import ServeProcess


def triton_grpc_target(server: ServeProcess) -> str:
    pid = server.triton_pid()
    for argument in process_group(pid).get(pid, "").split():
        if argument.startswith("--grpc-address="):
            return argument.split("=", 1)[1] + ":0"
    raise RuntimeError("tritonserver's gRPC address not found")


async def run(url: str, payloads: list[bytes], concurrency: int) -> tuple[float, float, float]:
    """(requests per second, p50 ms, p99 ms) for every payload sent once, `concurrency` at a time."""
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as aio

    client = aio.InferenceServerClient(url)
    queue = list(reversed(payloads))
    latencies: list[float] = []

    async def worker() -> None:
        while queue:
            payload = queue.pop()
            tensor = grpcclient.InferInput("messages", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[payload]], dtype=object))
            start = time.perf_counter()
            await client.infer("armorm", [tensor])
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    seconds = time.perf_counter() - start
    await client.close()
    latencies.sort()
    return len(payloads) / seconds, 1e3 * statistics.median(latencies), 1e3 * latencies[int(0.99 * len(latencies))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("repository", type=Path, nargs="?", default=Path("build/repository"))
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workloads = {
        "short (~25 tokens)": [json.dumps([{"role": "user", "content": f"Hi {i}"},
                                           {"role": "assistant", "content": "Hello!"}]).encode()
                               for i in range(args.requests)],
        "medium (~250 tokens)": [json.dumps([{"role": "user", "content": f"Question {i}: " + "tell me more " * 60},
                                            {"role": "assistant", "content": "Here is more. " * 40}]).encode()
                                 for i in range(args.requests)],
    }
    with ServeProcess(args.repository, Path("build/bench-gateway")) as server:
        direct = triton_grpc_target(server)
        print(f"gateway {server.grpc_url}, tritonserver {direct}; {args.requests} requests per round, "
              f"concurrency {args.concurrency}, {args.rounds} alternating rounds", file=sys.stderr)
        asyncio.run(run(server.grpc_url, workloads["short (~25 tokens)"][:64], 8))  # warm-up
        lines = [f"{'workload':<22} {'path':<9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"]
        for name, payloads in workloads.items():
            measured: dict[str, list[tuple[float, float, float]]] = {"direct": [], "gateway": []}
            for _ in range(args.rounds):
                for path, url in (("direct", direct), ("gateway", server.grpc_url)):
                    measured[path].append(asyncio.run(run(url, payloads, args.concurrency)))
            for path, rows in measured.items():
                best = max(rows)  # best round: the least disturbed by the rest of the machine
                lines.append(f"{name:<22} {path:<9} {best[0]:>8.1f} {best[1]:>8.1f} {best[2]:>8.1f}")
            ratio = max(measured["gateway"])[0] / max(measured["direct"])[0]
            lines.append(f"{name:<22} gateway/direct throughput ratio {ratio:.3f}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
