"""Datasets in and out of `armorm-score`, one row at a time: JSONL (a file or stdin), JSON (small files), and
Parquet through the optional `parquet` extra (pyarrow). Rows are read lazily and results written as they come,
so memory does not grow with the file; an output file can be resumed where an interrupted run left it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from armorm_client.contract import OBJECTIVES

PARQUET_HINT = "Parquet needs pyarrow: from the project root, pip install './client[parquet]'"
PARQUET_BATCH_ROWS = 1024  # rows per read batch and per written row group: bounds memory for any file size


class DatasetError(ValueError):
    """The input or the output as a whole cannot be used (unreadable, not ours to append to); nothing is sent."""


class RowError(ValueError):
    """A row that cannot become a request (no known shape); written as that row's error, never sent."""


@dataclass(frozen=True)
class Columns:
    """Where a row keeps what is scored. A row is scored as `messages` (a list of {role, content}, or its JSON
    text) when it has that column, else as `prompt` + `response` (a prompt string or message list, a response
    string). Pairs: `prompt` + `chosen` / `rejected` responses, or `chosen` / `rejected` whole conversations."""

    messages: str = "messages"
    prompt: str = "prompt"
    response: str = "response"
    chosen: str = "chosen"
    rejected: str = "rejected"
    subset: str = "subset"
    id: str = "id"


def input_format(path: str, declared: str | None = None) -> str:
    if declared:
        return declared
    if path == "-":
        return "jsonl"
    suffix = Path(path).suffix.lower()
    return {".parquet": "parquet", ".pq": "parquet", ".json": "json"}.get(suffix, "jsonl")


def count_rows(path: str, fmt: str) -> int | None:
    """Rows in the input when that is cheap to know (for the progress bar's ETA); None for stdin."""
    if path == "-":
        return None
    if fmt == "parquet":
        return _pyarrow_parquet().ParquetFile(path).metadata.num_rows
    if fmt == "json":
        return None
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def read_rows(path: str, fmt: str) -> Iterator[Any]:
    """The input's rows, one at a time (JSON is read whole: keep it for small files). A JSONL line that cannot be
    read (not UTF-8, not JSON, nested beyond the parser) becomes that row's RowError; the rest still flows."""
    if fmt == "parquet":
        parquet = _pyarrow_parquet()
        for batch in parquet.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
            yield from batch.to_pylist()
        return
    handle = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        if fmt == "json":
            try:
                data = json.loads(handle.read() or b"[]")
            except (ValueError, RecursionError) as err:
                raise DatasetError(f"{path} is not readable JSON: {err}") from None
            single = isinstance(data, dict) or (isinstance(data, list) and data and isinstance(data[0], dict)
                                                and "role" in data[0])
            yield from ([data] if single else data)
            return
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield parse_line(line, number)
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()


def parse_line(line: bytes, number: int) -> Any:
    try:
        return json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as err:
        return RowError(f"line {number} is not UTF-8 (byte {err.start})")
    except json.JSONDecodeError as err:
        return RowError(f"line {number} is not JSON ({err.msg} at column {err.colno})")
    except RecursionError:
        return RowError(f"line {number} is JSON nested too deeply to read")


def row_id(row: Any, index: int, columns: Columns) -> Any:
    """The input's own id when the row has one, else its 0-based index."""
    if isinstance(row, dict) and row.get(columns.id) is not None:
        return row[columns.id]
    return index


def id_text(identifier: Any) -> str:
    """An id as text: strings as they are, anything else as its JSON (what the Parquet id column holds)."""
    return identifier if isinstance(identifier, str) else json.dumps(identifier, default=str)


def _messages(value: Any, what: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise RowError(f"{what} is text that is not a JSON list of messages") from None
    if not isinstance(value, list):
        raise RowError(f"{what} must be a list of {{role, content}} messages")
    return value


def _prompt(value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return _messages(value, "prompt")


def conversation(row: Any, columns: Columns) -> list[dict[str, str]]:
    """What one row asks to score (the server validates the messages themselves)."""
    if isinstance(row, RowError):
        raise row
    if isinstance(row, list):
        return row
    if not isinstance(row, dict):
        raise RowError(f"a row must be an object or a list of messages, got {type(row).__name__}")
    if row.get(columns.messages) is not None:
        return _messages(row[columns.messages], columns.messages)
    if row.get(columns.prompt) is not None and row.get(columns.response) is not None:
        response = row[columns.response]
        if not isinstance(response, str):
            raise RowError(f"{columns.response} must be a string")
        return [*_prompt(row[columns.prompt]), {"role": "assistant", "content": response}]
    raise RowError(f"the row has no {columns.messages!r} list and no {columns.prompt!r} + {columns.response!r} "
                   f"columns (its keys: {', '.join(map(str, row))[:200]})")


def pair(row: Any, columns: Columns) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(chosen, rejected) conversations of a preference row."""
    if isinstance(row, RowError):
        raise row
    if not isinstance(row, dict) or row.get(columns.chosen) is None or row.get(columns.rejected) is None:
        raise RowError(f"a preference row needs {columns.chosen!r} and {columns.rejected!r}")
    chosen, rejected = row[columns.chosen], row[columns.rejected]
    if isinstance(chosen, str) and isinstance(rejected, str):
        if row.get(columns.prompt) is None:
            raise RowError(f"{columns.chosen!r} and {columns.rejected!r} are responses: the row needs "
                           f"{columns.prompt!r} too")
        prompt = _prompt(row[columns.prompt])
        return ([*prompt, {"role": "assistant", "content": chosen}],
                [*prompt, {"role": "assistant", "content": rejected}])
    return _messages(chosen, columns.chosen), _messages(rejected, columns.rejected)


# --- output -------------------------------------------------------------------------------------------------------

class Writer(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def output_format(path: str) -> str:
    return "parquet" if Path(path).suffix.lower() in (".parquet", ".pq") else "jsonl"


class JsonlWriter:
    """One JSON object per line, flushed every `flush_every` rows: after Ctrl-C or a crash of this process the file
    holds whole rows but perhaps a torn last line, which `resume_jsonl` cuts off; fsync once, on close."""

    def __init__(self, path: str | None, append: bool = False, flush_every: int = 64) -> None:
        # backslashreplace: a lone surrogate (possible in ids and errors) is written as its JSON escape.
        self.handle = sys.stdout if path is None else open(path, "a" if append else "w", encoding="utf-8",
                                                            errors="backslashreplace")
        self.flush_every, self.unflushed = flush_every, 0

    def write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self.unflushed += 1
        if self.unflushed >= self.flush_every:
            self.handle.flush()
            self.unflushed = 0

    def close(self) -> None:
        self.handle.flush()
        if self.handle is not sys.stdout:
            os.fsync(self.handle.fileno())
            self.handle.close()


# Keys every row armorm-score writes has one of, beside "id": resuming into anything else would overwrite it.
_ROW_KEYS = ("score", "error", "margin")


def resume_jsonl(path: str) -> tuple[int, Any]:
    """Rows already in a JSONL output and the id of the last one. Only a torn last line (no newline: the write
    was interrupted) is cut off; any other line that is not a row of ours stops the resume."""
    done, last_id, keep = 0, None, 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.endswith(b"\n"):
                break
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                row = None
            if not (isinstance(row, dict) and "id" in row and any(key in row for key in _ROW_KEYS)):
                raise DatasetError(f"--resume: line {number} of {path} is not a row armorm-score wrote; "
                                 "refusing to append to it")
            done, last_id, keep = done + 1, row["id"], keep + len(line)
    if keep != os.path.getsize(path):
        with open(path, "rb+") as handle:
            handle.truncate(keep)
    return done, last_id


def score_schema(pairs: bool) -> Any:
    import pyarrow as pa

    per_objective = pa.struct([(name, pa.float32()) for name in OBJECTIVES])
    common = [("id", pa.string()), ("error", pa.string()), ("status", pa.string())]
    if pairs:
        return pa.schema(common + [("subset", pa.string()), ("chosen_score", pa.float64()),
                                   ("rejected_score", pa.float64()), ("margin", pa.float64()),
                                   ("correct", pa.int8()), ("chosen_tokens", pa.int64()),
                                   ("rejected_tokens", pa.int64())])
    return pa.schema(common + [("score", pa.float64()), ("num_tokens", pa.int64()), ("rewards", per_objective),
                               ("gating", per_objective), ("coefficients", per_objective)])


class ParquetWriter:
    """Row groups of PARQUET_BATCH_ROWS rows. Written to `<path>.partial` and renamed over `path` on close, so
    `path` is always a whole file; on resume the rows of an existing `path` are copied over first."""

    def __init__(self, path: str, pairs: bool, keep_existing: bool = False) -> None:
        parquet = _pyarrow_parquet()
        self.path, self.partial = path, path + ".partial"
        self.schema = score_schema(pairs)
        self.writer = parquet.ParquetWriter(self.partial, self.schema)
        self.rows: list[dict[str, Any]] = []
        if keep_existing and Path(path).exists():
            import pyarrow as pa

            existing = parquet.ParquetFile(path)
            if not existing.schema_arrow.equals(self.schema):
                self.writer.close()
                os.remove(self.partial)
                raise DatasetError(f"--resume: {path} was not written by armorm-score{' --pairs' if pairs else ''} "
                                 "(its columns differ); refusing to append to it")
            for batch in existing.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                self.writer.write_table(pa.Table.from_batches([batch]))

    def write(self, record: dict[str, Any]) -> None:
        identifier = record.get("id")
        record = {**record, "id": None if identifier is None else id_text(identifier),
                  "subset": None if record.get("subset") is None else str(record["subset"])}
        self.rows.append(record)
        if len(self.rows) >= PARQUET_BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()
        os.replace(self.partial, self.path)


def resume_parquet(path: str) -> tuple[int, Any]:
    parquet = _pyarrow_parquet()
    file = parquet.ParquetFile(path)
    rows = file.metadata.num_rows
    if rows == 0:
        return 0, None
    last = file.read_row_group(file.num_row_groups - 1, columns=["id"]).column("id")
    return rows, last[len(last) - 1].as_py()


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as parquet
    except ImportError as err:  # absent, or built for another numpy major version
        raise DatasetError(f"{PARQUET_HINT} ({err})") from None
    return parquet
