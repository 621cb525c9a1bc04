"""armorm-score: score a dataset of conversations, or evaluate preference pairs, on a running server.

Input: JSONL (a file or `-` for stdin; one row per line), Parquet (the client's `parquet` extra: pyarrow) or a
small JSON file. A row is a list of messages, an object with a `messages` list, or an object with `prompt` and
`response` (column names by flag). With --pairs a row holds `prompt` + `chosen` / `rejected` responses, or
`chosen` / `rejected` whole conversations; both are scored in one request, which computes the prompt once.

Output, in input order as results arrive (a window of requests in flight keeps memory flat): one row per input
row with its `id` (the input's, else its index) and the score, num_tokens, rewards, gating and coefficients by
objective name, or the `error` the server gave. --output FILE.jsonl|.parquet writes a file that --resume
continues after an interruption (Ctrl-C, or the server unavailable beyond the client's retries: the file is
left whole); without it, rows go to stdout.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections import deque
from collections.abc import Iterator
from itertools import islice
from types import FrameType
from typing import Any

from armorm_client import dataset, evaluation
from armorm_client.client import ArmoRMClient, ServerUnavailableError
from armorm_client.dataset import Columns, RowError
from armorm_client.progress import Progress
from armorm_client.result import ArmoRMScore

INTERRUPTED = 130
SERVER_UNAVAILABLE = 3


class StopRun(Exception):
    """Stop sending and leave the output whole: `status` is the exit code, `reason` what to tell the user."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="armorm-score", description=__doc__.splitlines()[0],
                                     epilog="Exit status: 0 all rows scored, 1 some rows failed (written with their "
                                            "error), 2 bad usage or an output that is not ours, 3 the server stayed "
                                            "unavailable, 130 interrupted (3 and 130: --resume continues).")
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
    parser.add_argument("--pairwise", action="store_true",
                        help="--pairs with a pairwise preference model (--model NAME): each row's chosen score is "
                             "P(chosen ≻ rejected), its margin 2P - 1")
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
    if args.pairwise and not args.pairs:
        parser.error("--pairwise judges preference pairs: add --pairs")
    if args.window < 1:
        parser.error("--window must be at least 1")
    if args.output and args.input != "-" and os.path.exists(args.output) and os.path.samefile(args.input, args.output):
        parser.error("--output is the input file: write the results elsewhere")
    args.columns = Columns(**{f: getattr(args, f"{f}_column") for f in Columns.__dataclass_fields__})
    return args


# Code a stop must not interrupt midway: a KeyboardInterrupt raised inside gRPC's call setup left the channel a call
# it never started, and closing the channel then waited forever (1 SIGTERM in about 30). A stop that lands there is
# raised once the next answer is in (within the call timeout).
SHIELDED_PACKAGES = frozenset({"grpc", "tritonclient", "pyarrow"})


class StopSignals:
    """SIGTERM (a Job's end, a timeout) and SIGINT stop the run as Ctrl-C does, leaving the output whole."""

    def __init__(self) -> None:
        self.deferred = False

    def install(self) -> None:
        # SIGINT set again too: a shell starts background jobs (`armorm-score … &`, CI wrappers) with SIGINT
        # ignored, and Python then leaves it ignored, so kill -INT did nothing and the run went on to the end.
        self.deferred = False
        signal.signal(signal.SIGTERM, self.handle)
        signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        while frame is not None:
            if frame.f_globals.get("__name__", "").partition(".")[0] in SHIELDED_PACKAGES:
                self.deferred = True
                return
            frame = frame.f_back
        raise KeyboardInterrupt

    def raise_deferred(self) -> None:
        if self.deferred:
            raise KeyboardInterrupt


STOP_SIGNALS = StopSignals()


class Run:
    """One pass over the input: requests out, rows written in order, tallies and progress kept."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.fmt = dataset.input_format(args.input, args.input_format)
        try:
            self.skip, last_id = self.resume_point()
            self.remaining = self.rows_after(self.skip, last_id)  # checked against the output before it is opened
            self.writer = self.open_writer()
        except dataset.DatasetError as err:
            raise StopRun(2, str(err)) from None
        self.tally = evaluation.PairTally(keep_scores=bool(args.plot))
        enabled = {"on": True, "off": False}.get(args.progress)
        self.progress = Progress(None, self.skip, enabled=enabled)
        if self.progress.enabled and args.input != "-":
            self.progress.total = dataset.count_rows(args.input, self.fmt)  # only for the ETA
        self.failures = 0

    def resume_point(self) -> tuple[int, Any]:
        args = self.args
        if not (args.resume and args.output) or not os.path.exists(args.output):
            return 0, None
        if dataset.output_format(args.output) == "parquet":
            return dataset.resume_parquet(args.output)
        return dataset.resume_jsonl(args.output)

    def open_writer(self) -> dataset.Writer:
        args = self.args
        if args.output and dataset.output_format(args.output) == "parquet":
            return dataset.ParquetWriter(args.output, args.pairs, keep_existing=self.skip > 0)
        if args.output:
            return dataset.JsonlWriter(args.output, append=self.skip > 0)
        table = args.format == "table" or (args.format is None and sys.stdout.isatty())
        return TableWriter(args.top, args.pairs) if table else dataset.JsonlWriter(None)

    def rows_after(self, skip: int, last_id: Any) -> Iterator[tuple[Any, Any]]:
        """(id, row) of the rows still to score, once the first `skip` rows are checked to be those the output
        already holds (its last id); the skipped rows are read one by one, never held."""
        rows = enumerate(dataset.read_rows(self.args.input, self.fmt))
        if skip:
            seen, last = 0, None
            for item in islice(rows, skip):
                seen, last = seen + 1, item
            if seen < skip:
                raise StopRun(2, f"--resume: {self.args.output} holds {skip} rows but the input has only {seen}: "
                                 "is it the same input?")
            index, row = last
            expected = dataset.row_id(row, index, self.args.columns)
            if dataset.id_text(expected) != dataset.id_text(last_id):
                raise StopRun(2, f"--resume: the output's last row is id {last_id!r} but input row {index} is id "
                                 f"{expected!r}: is it the same input?")
        return ((dataset.row_id(row, index, self.args.columns), row) for index, row in rows)

    def requests(self, keys: deque) -> Iterator[list | RowError]:
        """Each row's conversations, or the RowError that keeps it from becoming a request; (id, subset) of each
        goes to `keys` in the same order, to meet its answer."""
        columns = self.args.columns
        for identifier, row in self.remaining:
            subset = row.get(columns.subset) if isinstance(row, dict) else None
            keys.append((identifier, None if subset is None else str(subset)))
            try:
                yield list(dataset.pair(row, columns)) if self.args.pairs else [dataset.conversation(row, columns)]
            except RowError as err:
                yield err

    def run(self, client: ArmoRMClient) -> int:
        keys: deque = deque()  # (id, subset) of the requests in flight, in order
        answers = client.score_stream(self.requests(keys), self.args.window)
        try:
            for answer in answers:
                identifier, subset = keys.popleft()
                if isinstance(answer, ServerUnavailableError):  # retries spent: stopping beats a file of errors
                    raise StopRun(SERVER_UNAVAILABLE, f"the server stayed unavailable ({answer})")
                self.emit(identifier, subset, answer)
                STOP_SIGNALS.raise_deferred()
        except KeyboardInterrupt:
            return self.stopped(answers, StopRun(INTERRUPTED, "interrupted"))
        except dataset.DatasetError as err:
            return self.stopped(answers, StopRun(2, str(err)))
        except StopRun as stop:
            return self.stopped(answers, stop)
        finally:
            self.writer.close()  # whatever ends the run, the output is left whole
        print(f"armorm-score: {self.progress.finish()}" + (f"; resumed after {self.skip} rows" if self.skip else ""),
              file=sys.stderr)
        if self.args.pairs:
            for line in evaluation.report(self.tally):
                print(line, file=sys.stderr if self.args.output is None else sys.stdout)
            if self.args.plot:
                evaluation.plot(self.tally, self.args.plot)
                print(f"wrote {self.args.plot}", file=sys.stderr)
        return 1 if self.failures else 0

    def stopped(self, answers: Iterator, stop: StopRun) -> int:
        answers.close()  # nothing more is sent; answers still in flight are dropped (--resume redoes them)
        where = self.args.output or "the output"
        advice = " (run again with --resume to finish)" if self.args.output and stop.status != 2 else ""
        print(f"\narmorm-score: {stop.reason}; {self.skip + self.progress.rows} rows are in {where}{advice}",
              file=sys.stderr)
        return stop.status

    def emit(self, identifier: Any, subset: str | None, answer: list[ArmoRMScore] | Exception) -> None:
        if isinstance(answer, Exception):
            self.failures += 1
            record = {"id": identifier, "error": str(answer),
                      "status": getattr(answer, "status", None) or "INVALID_ROW"}
            if self.args.pairs:
                self.tally.record(subset, answer)
                record["subset"] = subset
            self.writer.write(record)
            self.progress.update(errors=1)
        elif self.args.pairs:
            chosen, rejected = answer
            self.writer.write({"id": identifier, "subset": subset, "chosen_score": chosen.score,
                               "rejected_score": rejected.score, "margin": chosen.score - rejected.score,
                               "correct": self.tally.record(subset, answer),
                               "chosen_tokens": chosen.num_tokens, "rejected_tokens": rejected.num_tokens})
            self.progress.update(tokens=chosen.num_tokens + rejected.num_tokens)
        else:
            (result,) = answer
            self.writer.write({"id": identifier, **result.to_dict()})
            self.progress.update(tokens=result.num_tokens)


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
    STOP_SIGNALS.install()
    if args.input == "-" and sys.stdin.isatty():
        print("armorm-score: reading JSONL rows from the terminal (end with Ctrl-D)", file=sys.stderr)
    try:
        run = Run(args)
    except StopRun as stop:
        print(f"armorm-score: {stop.reason}", file=sys.stderr)
        return stop.status
    if args.pairwise:
        from armorm_client.pairwise import PairwiseClient, PairwiseScores

        with PairwiseClient(args.url, model=args.model, api_key=args.api_key) as judge:
            return run.run(PairwiseScores(judge))
    with ArmoRMClient(args.url, model=args.model, api_key=args.api_key) as client:
        return run.run(client)


if __name__ == "__main__":
    sys.exit(main())
