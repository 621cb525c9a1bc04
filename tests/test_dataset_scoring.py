"""armorm-score at dataset scale, as a subprocess against the live server: flat memory while the input grows
tenfold, rows in input order, Ctrl-C then --resume equal to an uninterrupted run, Parquet in and out, bad rows
written with their error among good ones, and preference pairs with accuracy checked by hand."""

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from armorm.serving import metrics
from armorm.testing.prometheus import scrape, total
from armorm_client import evaluation
from armorm_client.samples import SAMPLE_PAIRS
from tests.conversations import varied_conversations

pytestmark = pytest.mark.integration
SCORE_ATOL = 1e-4


def score_command(server, *args) -> list[str]:
    return [sys.executable, "-m", "armorm_client", *map(str, args), "--url", server.grpc_url, "--progress", "off"]


def run(server, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(score_command(server, *args), capture_output=True, text=True, timeout=timeout)


def short_rows(count: int) -> list[dict]:
    """Short conversations, each a little different, with their own ids."""
    return [{"id": f"r{i}", "prompt": f"Count to {i % 97}.", "response": f"{' '.join(map(str, range(i % 7)))} done"}
            for i in range(count)]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def peak_rss_mib(command: list[str], reached: Callable[[], bool]) -> tuple[int, float, float]:
    """(exit code, the peak resident memory in MiB when `reached()` first held, the peak at the end): the kernel's
    high-water mark (VmHWM) of the program's own address space, read until it exits (rusage's ru_maxrss would
    count the forked test process)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak_kib, at_mark_kib = 0, None
    status, cmdline = Path(f"/proc/{process.pid}/status"), Path(f"/proc/{process.pid}/cmdline")
    while process.poll() is None:
        try:
            if b"armorm_client" in cmdline.read_bytes():  # after exec: the fork's copy of this process is gone
                fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
                peak_kib = max(peak_kib, int(fields["VmHWM"].split()[0]))
                if at_mark_kib is None and reached():
                    at_mark_kib = peak_kib
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.05)
    return process.returncode, (at_mark_kib or 0) / 1024, peak_kib / 1024


def test_memory_stays_flat_while_the_input_grows_tenfold(server, tmp_path):
    """20 000 rows: the client's peak RSS after 2 000 rows and after all of them differs by less than 16 MiB and
    stays under 200 MiB (the window of 64 requests, not the file, is what it holds); the 20 000 rows come back
    complete and in order. One run, read twice: a second run of 2 000 rows would cost a tenth more scoring."""
    large = write_jsonl(tmp_path / "large.jsonl", short_rows(20000))
    before = total(scrape(server.metrics_url), metrics.CONVERSATIONS)

    def answered_2000() -> bool:  # 2 064 taken in by the server, at most a window of 64 still in flight
        return total(scrape(server.metrics_url), metrics.CONVERSATIONS) >= before + 2000 + 64

    code, peak_small, peak_large = peak_rss_mib(score_command(server, large, "-o", tmp_path / "large.out.jsonl"),
                                                answered_2000)
    assert code == 0
    print(f"peak RSS: {peak_small:.1f} MiB for 2000 rows, {peak_large:.1f} MiB for 20000 rows")
    assert peak_large - peak_small < 16, f"memory grew with the input: {peak_small:.1f} → {peak_large:.1f} MiB"
    assert 20 < peak_large < 200
    rows = read_jsonl(tmp_path / "large.out.jsonl")
    assert [row["id"] for row in rows] == [f"r{i}" for i in range(20000)]
    assert all(isinstance(row["score"], float) and row["num_tokens"] > 0 for row in rows)


def test_ctrl_c_then_resume_equals_an_uninterrupted_run(server, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", short_rows(4000))
    whole = tmp_path / "whole.jsonl"
    assert run(server, source, "-o", whole).returncode == 0
    partial = tmp_path / "partial.jsonl"
    process = subprocess.Popen(score_command(server, source, "-o", partial, "--window", "8"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not partial.exists() or partial.stat().st_size < 50_000):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "--resume" in stderr
    interrupted = read_jsonl(partial)  # every line whole
    assert 0 < len(interrupted) < 4000, "interrupted mid-way"
    resumed = run(server, source, "-o", partial, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed after {len(interrupted)} rows" in resumed.stderr
    final, expected = read_jsonl(partial), read_jsonl(whole)
    assert [r["id"] for r in final] == [r["id"] for r in expected], "complete, in order, no duplicates"
    assert all(abs(a["score"] - b["score"]) <= SCORE_ATOL for a, b in zip(final, expected))
    again = run(server, source, "-o", partial, "--resume")  # nothing left: a no-op, not a duplicate
    assert again.returncode == 0 and len(read_jsonl(partial)) == 4000


def frame_of_module(name: str):
    namespace = {"__name__": name, "sys": sys}
    exec("def here():\n    return sys._getframe()", namespace)  # noqa: S102 - a frame that belongs to `name`
    return namespace["here"]()


def test_a_stop_inside_grpc_is_held_until_the_next_answer():
    """A KeyboardInterrupt raised in gRPC's call setup once left the channel a call it never started, and the
    interrupted run then hung in close(): a stop that lands there is raised after the next answer instead."""
    from armorm_client.__main__ import StopSignals

    stop = StopSignals()
    stop.handle(signal.SIGTERM, frame_of_module("grpc._channel"))
    assert stop.deferred
    with pytest.raises(KeyboardInterrupt):
        stop.raise_deferred()
    with pytest.raises(KeyboardInterrupt):
        StopSignals().handle(signal.SIGTERM, frame_of_module("armorm_client.client"))


def test_sigterm_leaves_a_whole_parquet_file_that_resumes(server, tmp_path):
    import pyarrow.parquet as pq

    source = write_jsonl(tmp_path / "in.jsonl", short_rows(3000))
    output = tmp_path / "out.parquet"
    before = total(scrape(server.metrics_url), metrics.CONVERSATIONS)
    process = subprocess.Popen(score_command(server, source, "-o", output, "--window", "8"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    # 64 rows taken in by the server, at most 8 of them still in flight: at least 56 are answered (held for the
    # next row group, which the SIGTERM writes) and most of the 3000 are not.
    while total(scrape(server.metrics_url), metrics.CONVERSATIONS) < before + 64:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
        time.sleep(0.05)
    process.terminate()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    done = pq.read_table(output).num_rows  # a whole file: footer written, renamed into place
    assert 0 < done < 3000
    resumed = run(server, source, "-o", output, "--resume")
    assert resumed.returncode == 0 and f"resumed after {done} rows" in resumed.stderr, resumed.stderr
    assert pq.read_table(output).column("id").to_pylist() == [f"r{i}" for i in range(3000)]


def test_a_server_that_stays_unavailable_stops_the_run_resumably(tmp_path):
    from armorm.launcher.loopback import free_port

    source = write_jsonl(tmp_path / "in.jsonl", short_rows(5))
    output = tmp_path / "out.jsonl"
    done = subprocess.run([sys.executable, "-m", "armorm_client", str(source), "--url", f"127.0.0.1:{free_port()}",
                           "-o", str(output), "--progress", "off"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "the server stayed unavailable" in done.stderr and "--resume" in done.stderr
    assert output.read_text() == "", "no row is written as an error: --resume scores them all later"


def test_the_output_may_not_be_the_input(server, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", short_rows(3))
    before = source.read_text()
    done = run(server, source, "-o", source)
    assert done.returncode == 2 and "--output is the input file" in done.stderr
    assert source.read_text() == before


def test_resume_refuses_an_output_of_another_input(server, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", short_rows(5))
    output = write_jsonl(tmp_path / "out.jsonl", [{"id": "other", "score": 0.0}])
    done = run(server, source, "-o", output, "--resume")
    assert done.returncode != 0 and "is it the same input?" in done.stderr


def test_parquet_in_and_out(server, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = short_rows(300)
    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    output = tmp_path / "out.parquet"
    done = run(server, source, "-o", output)
    assert done.returncode == 0, done.stderr
    table = pq.read_table(output).to_pylist()
    reference = tmp_path / "reference.jsonl"
    assert run(server, write_jsonl(tmp_path / "in.jsonl", rows), "-o", reference).returncode == 0
    expected = read_jsonl(reference)
    assert [r["id"] for r in table] == [r["id"] for r in expected]
    for got, want in zip(table, expected):
        assert abs(got["score"] - want["score"]) <= SCORE_ATOL and got["num_tokens"] == want["num_tokens"]
        assert got["rewards"].keys() == want["rewards"].keys() and got["error"] is None


def test_bad_rows_are_written_with_their_error_and_the_rest_is_scored(server, tmp_path, reference):
    good = varied_conversations()[:3]
    lines = [json.dumps({"messages": good[0]}),
             "{not json",
             json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),  # the server refuses it
             json.dumps({"text": "no known shape"}),
             json.dumps({"prompt": "Hi", "response": good[1][-1]["content"]}),
             json.dumps(good[2])]
    source = tmp_path / "mixed.jsonl"
    source.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out.jsonl"
    done = run(server, source, "-o", output, "--window", "2")
    assert done.returncode == 1, "some rows failed"
    rows = read_jsonl(output)
    assert [r["id"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert "line 2 is not JSON" in rows[1]["error"] and rows[1]["status"] == "INVALID_ROW"
    assert rows[2]["status"] == "StatusCode.INVALID_ARGUMENT" and "assistant" in rows[2]["error"]
    assert "no 'messages' list" in rows[3]["error"]
    for index, conversation in ((0, good[0]), (5, good[2])):
        assert abs(rows[index]["score"] - reference.score(conversation).score) <= SCORE_ATOL
    assert "error" not in rows[4]


def test_pairs_accuracy_equals_a_hand_count_from_reference_scores(server, tmp_path, reference):
    pairs = [json.loads(line) for line in SAMPLE_PAIRS.read_text().splitlines()]
    tie = {"id": "tie", "subset": "shp", "prompt": "Same?", "chosen": "Yes.", "rejected": "Yes."}
    source = write_jsonl(tmp_path / "pairs.jsonl", pairs + [tie])
    output, plot = tmp_path / "margins.jsonl", tmp_path / "pairs.png"
    done = run(server, source, "--pairs", "-o", output, "--plot", plot)
    assert done.returncode == 0, done.stderr
    reference_margins = []
    for row in pairs + [tie]:
        prompt = [{"role": "user", "content": row["prompt"]}]
        chosen = reference.score([*prompt, {"role": "assistant", "content": row["chosen"]}]).score
        rejected = reference.score([*prompt, {"role": "assistant", "content": row["rejected"]}]).score
        reference_margins.append(chosen - rejected)
    rows = read_jsonl(output)
    assert [r["id"] for r in rows] == [p["id"] for p in pairs] + ["tie"]
    for row, margin in zip(rows, reference_margins):
        assert abs(row["margin"] - margin) <= 2 * SCORE_ATOL
        if abs(margin) > 1e-3:  # clear of float noise: the verdict is the reference's
            assert row["correct"] == (1 if margin > 0 else 0), row["id"]
    assert rows[-1]["margin"] == 0 and rows[-1]["correct"] == 0, "a tie counts as wrong"
    right = sum(1 for margin in reference_margins if margin > 1e-3)  # the hand count (no near-ties here)
    assert all(abs(m) > 1e-3 or m == 0 for m in reference_margins), "a near-tie would make the count ambiguous"
    accuracy = 100 * right / len(rows)
    assert f"pairs: {len(rows)} scored, accuracy {accuracy:.2f}%" in done.stdout
    subsets: dict[str, list[int]] = {}
    for row in rows:
        subsets.setdefault(row["subset"], []).append(row["correct"])
    sections = evaluation.section_scores({name: sum(c) / len(c) for name, c in subsets.items()})
    chat = [s for s in ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med")
            if s in subsets]
    by_hand = 100 * sum(sum(subsets[s]) / len(subsets[s]) * evaluation.EXAMPLE_COUNTS[s] for s in chat) / sum(
        evaluation.EXAMPLE_COUNTS[s] for s in chat)
    assert sections["Chat"] == pytest.approx(by_hand)
    printed = next(line for line in done.stdout.splitlines() if line.startswith("RewardBench: "))
    assert printed == "RewardBench: " + ", ".join(f"{name} {value:.1f}" for name, value in sections.items())
    assert "Score" in sections, "the sample covers every section"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stdin_in_stdout_out(server, reference):
    conversation = varied_conversations()[0]
    done = subprocess.run(score_command(server, "-", "--format", "jsonl"), input=json.dumps(conversation) + "\n",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (row,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert row["id"] == 0 and abs(row["score"] - reference.score(conversation).score) <= SCORE_ATOL
    assert "1 rows in" in done.stderr
