"""The demo: serve an exported repository, score the model card's three example responses over gRPC,
print each score with its top-3 objectives by |coefficient|, and stop the server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from armorm.launcher.serve_process import ServeProcess
from armorm_client import ArmoRMClient
from armorm_client.samples import MODEL_CARD_PROMPT, model_card_conversations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("repository", type=Path, nargs="?", default=Path("build/repository"))
    parser.add_argument("--random-weights", action="store_true", help="say that the scores come from random weights")
    args = parser.parse_args()
    logs = Path("build/demo-logs")
    print(f"starting armorm-serve on {args.repository} (logs: {logs}/) ...", file=sys.stderr, flush=True)
    with ServeProcess(args.repository, logs) as server:
        print(f"server ready on gRPC {server.grpc_url}", file=sys.stderr, flush=True)
        with ArmoRMClient(server.grpc_url) as client:
            conversations = model_card_conversations()
            results = client.score_batch(conversations)
    if args.random_weights:
        print("\n(default checkpoint: small random weights in ArmoRM's format; the numbers exercise the pipeline,"
              " they are not preferences)")
    print(f"\nPrompt: {MODEL_CARD_PROMPT}\n")
    for messages, result in zip(conversations, results):
        print(f"Response: {messages[-1]['content']}")
        print(f"  score {result.score:+.5f}   ({result.num_tokens} tokens)")
        for name, value in result.top_objectives(3):
            print(f"    {name:<40} {value:+.5f}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
