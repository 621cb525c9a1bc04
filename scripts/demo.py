"""The demo: serve an exported repository, score the model card's three example responses over gRPC,
print each score with its top-3 objectives by |coefficient|, evaluate the bundled preference pairs (one line),
and stop the server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from armorm.testing.serve_process import ServeProcess
from armorm_client import ArmoRMClient, dataset, evaluation
from armorm_client.samples import MODEL_CARD_PROMPT, SAMPLE_PAIRS, model_card_conversations


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
            pairs_summary = evaluate_sample_pairs(client)
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
    print(f"Sample preference pairs ({SAMPLE_PAIRS.name}; armorm-score --pairs for the full report): {pairs_summary}")
    return 0


def evaluate_sample_pairs(client: ArmoRMClient) -> str:
    """The bundled pairs, each (chosen, rejected) in one request, tallied as armorm-score --pairs does."""
    columns = dataset.Columns()
    rows = list(dataset.read_rows(str(SAMPLE_PAIRS), "jsonl"))
    tally = evaluation.PairTally()
    for row, answer in zip(rows, client.score_stream(dataset.pair(row, columns) for row in rows)):
        tally.record(row.get(columns.subset), answer)
    return evaluation.report(tally)[0]


if __name__ == "__main__":
    sys.exit(main())
