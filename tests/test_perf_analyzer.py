"""perf_analyzer from tritonclient[all]==2.51.0 against the live server."""

import re
import subprocess

import pytest

from armorm_client.perf import mixed_conversations, perf_command, perf_environment, write_input_data

pytestmark = pytest.mark.integration


def test_perf_analyzer_smoke_run(server, tmp_path):
    data = write_input_data(tmp_path / "input.json", mixed_conversations(8))
    # A smoke run: perf_analyzer drives the live server and reports throughput. Stability is not asked
    # for (1000 %): on a shared 2-core machine windows differ widely.
    command = perf_command(server.grpc_url, data, ["--concurrency-range", "2", "--measurement-interval", "1500",
                                                   "--max-trials", "10", "--stability-percentage", "1000"])
    done = subprocess.run(command, env=perf_environment(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    throughput = re.search(r"Throughput: ([0-9.]+) infer/sec", done.stdout)
    assert throughput and float(throughput.group(1)) > 0, done.stdout[-2000:]
