"""armorm-score: score a JSON or JSONL file of conversations on a running server.

Input: a .json file holding one conversation (a list of {"role", "content"}) or a list of them, or a
.jsonl file with one conversation per line (a list, or an object with a "messages" list). `-` reads stdin.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from armorm_client.client import ArmoRMClient, ArmoRMError


def read_conversations(path: str) -> list[Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    stripped = text.strip()
    if not stripped:
        return []
    if path.endswith(".jsonl") or (path == "-" and "\n" in stripped and not stripped.startswith("[")):
        rows = [json.loads(line) for line in stripped.splitlines() if line.strip()]
    else:
        data = json.loads(stripped)
        is_single = isinstance(data, list) and data and isinstance(data[0], dict) and "role" in data[0]
        rows = [data] if is_single else data
    return [row["messages"] if isinstance(row, dict) and "messages" in row else row for row in rows]


def summary(messages: Any, width: int = 48) -> str:
    try:
        text = str(messages[-1]["content"]).replace("\n", " ")
    except (TypeError, KeyError, IndexError):
        text = str(messages)
    return text if len(text) <= width else text[: width - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="armorm-score", description=__doc__.splitlines()[0])
    parser.add_argument("input", help="a .json or .jsonl file of conversations, or - for stdin")
    parser.add_argument("--url", default="localhost:8001",
                        help="the server's gRPC address; dns:///NAME:PORT sends calls round-robin to every address "
                             "NAME resolves to (a headless Kubernetes Service: every replica)")
    parser.add_argument("--model", default="armorm")
    parser.add_argument("--format", choices=("table", "jsonl"), default="table")
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--top", type=int, default=3, help="objectives shown per row (by |coefficient|)")
    args = parser.parse_args(argv)

    conversations = read_conversations(args.input)
    with ArmoRMClient(args.url, model=args.model) as client:
        results = client.score_batch(conversations, max_in_flight=args.max_in_flight, return_exceptions=True)
    failures = 0
    if args.format == "table":
        print(f"{'#':>3}  {'score':>9}  {'tokens':>6}  {'response':<48}  top objectives by |coefficient|")
    for index, (messages, result) in enumerate(zip(conversations, results)):
        if isinstance(result, ArmoRMError):
            failures += 1
            if args.format == "jsonl":
                print(json.dumps({"index": index, "error": str(result), "status": result.status}))
            else:
                print(f"{index:>3}  {'error':>9}  {'':>6}  {summary(messages):<48}  {result}")
            continue
        if args.format == "jsonl":
            print(json.dumps({"index": index, **result.to_dict()}, ensure_ascii=False))
        else:
            top = ", ".join(f"{name} {value:+.5f}" for name, value in result.top_objectives(args.top))
            print(f"{index:>3}  {result.score:>9.5f}  {result.num_tokens:>6}  {summary(messages):<48}  {top}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
