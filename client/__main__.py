"""armorm-score: score a dataset of conversations, or evaluate preference pairs, on a running server.

Input: JSONL (a file or `-` for stdin; one row per line), Parquet (`pip install 'armorm-client[parquet]'`) or a
small JSON file. A row is a list of messages, an object with a `messages` list, or an object with `prompt` and
`response` (column names by flag). With --pairs a row holds `prompt` + `chosen` / `rejected` responses, or
`chosen` / `rejected` whole conversations; both are scored in one request, which computes the prompt once.

Output, in input order as results arrive (a window of requests in flight keeps memory flat): one row per input
row with its `id` (the input's, else its index) and the score, num_tokens, rewards, gating and coefficients by
objective name, or the `error` the server gave. --output FILE.jsonl|.parquet writes a file that --resume
continues after an interruption (Ctrl-C leaves it whole); without it, rows go to stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from itertools import islice
from typing import Any

from armorm_client import dataset, evaluation
from armorm_client.client import ArmoRMClient, ArmoRMError
from armorm_client.dataset import Columns, RowError
from armorm_client.progress import Progress
from armorm_client.result import ArmoRMScore

INTERRUPTED = 130


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="armorm-score", description=__doc__.splitlines()[0],
                                     epilog="Exit status: 0 all rows scored, 1 some rows failed (written with their "
                                            "error), 2 bad usage, 130 interrupted (--resume continues).")
    parser.add_argument("input", help="a .jsonl, .parquet or .json file, or - for JSONL on stdin")
    parser.add_argument("--url", default="localhost:8001",
                        help="the server's gRPC address; dns:///NAME:PORT sends calls round-robin to every address "
                             "NAME resolves to (a headless Kubernetes Service: every replica)")
    parser.add_argument("--model", default="armorm")
    parser.add_argument("--api-key", default=os.environ.get("ARMORM_API_KEY"),
                        help="for servers that require one (default: $ARMORM_API_KEY; a flag shows in ps)")
    parser.add_argument("--output", "-o", default=None,
                        help="write rows to this .jsonl or .parquet file (default: stdout)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run: keep the rows already in --output, score the rest")
    parser.add_argument("--input-format", choices=("jsonl", "json", "parquet"), default=None,
                        help="default: from the file name (stdin: jsonl)")
    parser.add_argument("--format", choices=("table", "jsonl"), default=None,
                        help="stdout only: a readable table or JSONL (default: table on a terminal, else jsonl)")
    parser.add_argument("--window", "--max-in-flight", dest="window", type=int, default=64,
                        help="requests in flight at once (memory stays bounded by this, not by the input)")
    parser.add_argument("--top", type=int, default=3, help="table: objectives shown per row (by |coefficient|)")
    parser.add_argument("--pairs", action="store_true", help="preference pairs: margins and accuracy")
    parser.add_argument("--plot", default=None, help="--pairs: write score distributions and accuracy to this PNG")
    parser.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                        help="the progress line on stderr (auto: on a terminal)")
    names = Columns()
    for field in ("messages", "prompt", "response", "chosen", "rejected", "subset", "id"):
        parser.add_argument(f"--{field}-column", default=getattr(names, field), metavar="NAME",
                            help=f"column holding the {field} (default {getattr(names, field)!r})")
    args = parser.parse_args(argv)
    if args.resume and not args.output:
        parser.error("--resume needs --output (the file to continue)")
    if args.plot and not args.pairs:
        parser.error("--plot draws the pairs evaluation: add --pairs")
    if args.window < 1:
        parser.error("--window must be at least 1")
    args.columns = Columns(**{f: getattr(args, f"{f}_column") for f in Columns.__dataclass_fields__})
    return args


class Run:
    """One pass over the input: requests out, rows written in order, tallies and progress kept."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.fmt = dataset.input_format(args.input, args.input_format)
        self.skip, self.last_id = self.resume_point()
        self.writer = self.open_writer()
        self.tally = evaluation.PairTally()
        total = dataset.count_rows(args.input, self.fmt) if args.input != "-" else None
        self.progress = Progress(total, self.skip, enabled={"on": True, "off": False}.get(args.progress))
        self.failures = 0

    def resume_point(self) -> tuple[int, Any]:
        args = self.args
        if not (args.resume and args.output) or not os.path.exists(args.output):
            return 0, None
        if dataset.output_format(args.output) == "parquet":
            return dataset.resume_parquet(args.output)
        return dataset.resume_jsonl(args.output)

    def open_writer(self) -> Any:
        args = self.args
        if args.output and dataset.output_format(args.output) == "parquet":
            return dataset.ParquetWriter(args.output, args.pairs, keep_existing=self.skip > 0)
        if args.output:
            return dataset.JsonlWriter(args.output, append=self.skip > 0)
        table = args.format == "table" or (args.format is None and sys.stdout.isatty())
        return TableWriter(args.top, args.pairs) if table else dataset.JsonlWriter(None)

    def rows(self) -> Iterator[tuple[Any, Any]]:
        """(id, row) of the rows still to score, checking that a resumed output matches this input."""
        rows = enumerate(dataset.read_rows(self.args.input, self.fmt))
        if self.skip:
            seen, last = 0, None
            for item in islice(rows, self.skip):  # skipped one by one: a long prefix is never held in memory
                seen, last = seen + 1, item
            if seen < self.skip:
                raise SystemExit(f"--resume: {self.args.output} holds {self.skip} rows but the input has only "
                                 f"{seen}: is it the same input?")
            index, row = last
            expected = dataset.row_id(row, index, self.args.columns)
            if str(expected) != str(self.last_id):
                raise SystemExit(f"--resume: the output's last row is id {self.last_id!r} but input row {index} is "
                                 f"id {expected!r}: is it the same input?")
        for index, row in rows:
            yield dataset.row_id(row, index, self.args.columns), row

    def requests(self, pending: list) -> Iterator[list]:
        """The conversations of each row, one request per row; rows without a usable shape are set aside."""
        columns = self.args.columns
        for identifier, row in self.rows():
            try:
                conversations = list(dataset.pair(row, columns)) if self.args.pairs else [
                    dataset.conversation(row, columns)]
                error = None
            except RowError as err:
                conversations, error = [], err
            subset = row.get(columns.subset) if isinstance(row, dict) else None
            pending.append((identifier, subset, error))  # the conversations travel with the request only
            yield conversations

    def run(self, client: ArmoRMClient) -> int:
        pending: list = []  # (id, subset, row error) in request order; drained as answered
        cursor = 0
        answers = client.score_stream(self.valid_only(self.requests(pending)), self.args.window)
        try:
            while True:
                while cursor < len(pending) and pending[cursor][2] is not None:  # unusable rows: written in order
                    self.emit(pending[cursor], None)
                    cursor += 1
                try:
                    answer = next(answers)
                except StopIteration:
                    break
                while pending[cursor][2] is not None:  # read while the answer was awaited: still before it
                    self.emit(pending[cursor], None)
                    cursor += 1
                self.emit(pending[cursor], answer)
                cursor += 1
                if cursor > 1024:  # keep the bookkeeping list short
                    del pending[:cursor]
                    cursor = 0
            while cursor < len(pending):
                self.emit(pending[cursor], None)
                cursor += 1
        except KeyboardInterrupt:
            answers.close()
            self.close()
            print(f"\narmorm-score: interrupted; {self.skip + self.progress.rows} rows are in "
                  f"{self.args.output or 'the output'}" + (" (run again with --resume to finish)"
                                                            if self.args.output else ""), file=sys.stderr)
            return INTERRUPTED
        self.close()
        print(f"armorm-score: {self.progress.finish()}" + (f"; resumed after {self.skip} rows" if self.skip else ""),
              file=sys.stderr)
        if self.args.pairs:
            for line in evaluation.report(self.tally):
                print(line, file=sys.stderr if self.args.output is None else sys.stdout)
            if self.args.plot:
                evaluation.plot(self.tally, self.args.plot)
                print(f"wrote {self.args.plot}", file=sys.stderr)
        return 1 if self.failures else 0

    @staticmethod
    def valid_only(requests: Iterator[list]) -> Iterator[list]:
        return (conversations for conversations in requests if conversations)

    def emit(self, item: tuple, answer: list[ArmoRMScore] | ArmoRMError | None) -> None:
        identifier, subset, row_error = item
        error = row_error if row_error is not None else answer if isinstance(answer, ArmoRMError) else None
        if error is not None:
            self.failures += 1
            self.tally.errors += self.args.pairs
            record = {"id": identifier, "error": str(error),
                      "status": getattr(error, "status", None) or "INVALID_ROW"}
            if self.args.pairs:
                record["subset"] = subset
            self.writer.write(record)
            self.progress.update(errors=1)
            return
        if self.args.pairs:
            chosen, rejected = answer
            self.writer.write({"id": identifier, "subset": subset, "chosen_score": chosen.score,
                               "rejected_score": rejected.score, "margin": chosen.score - rejected.score,
                               "correct": self.tally.add(subset, chosen.score, rejected.score),
                               "chosen_tokens": chosen.num_tokens, "rejected_tokens": rejected.num_tokens})
            self.progress.update(tokens=chosen.num_tokens + rejected.num_tokens)
        else:
            (result,) = answer
            self.writer.write({"id": identifier, **result.to_dict()})
            self.progress.update(tokens=result.num_tokens)

    def close(self) -> None:
        self.writer.close()


class TableWriter:
    """Rows as a readable table on stdout (the default on a terminal)."""

    def __init__(self, top: int, pairs: bool) -> None:
        self.top, self.pairs = top, pairs
        header = (f"{'id':>6}  {'chosen':>9}  {'rejected':>9}  {'margin':>9}  subset" if pairs else
                  f"{'id':>6}  {'score':>9}  {'tokens':>6}  top objectives by |coefficient|")
        print(header, flush=True)

    def write(self, record: dict[str, Any]) -> None:
        identifier = str(record["id"])[:6]
        if "error" in record:
            print(f"{identifier:>6}  {'error':>9}  {record['error']}", flush=True)
        elif self.pairs:
            print(f"{identifier:>6}  {record['chosen_score']:>9.5f}  {record['rejected_score']:>9.5f}  "
                  f"{record['margin']:>+9.5f}  {record['subset'] or ''}", flush=True)
        else:
            coefficients = record["coefficients"]
            top = sorted(coefficients.items(), key=lambda item: -abs(item[1]))[: self.top]
            shown = ", ".join(f"{name} {value:+.5f}" for name, value in top)
            print(f"{identifier:>6}  {record['score']:>9.5f}  {record['num_tokens']:>6}  {shown}", flush=True)

    def close(self) -> None:
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args)
    with ArmoRMClient(args.url, model=args.model, api_key=args.api_key) as client:
        return run.run(client)


if __name__ == "__main__":
    sys.exit(main())
