"""perf_analyzer from tritonclient[all]==2.51.0 against the live server: both public models (armorm with messages,
armorm_text with templated text), in every mode a load test uses: gRPC, gRPC streaming, HTTP, and system shared
memory (which refuses models with optional inputs, and needs the admin key through the gateway)."""

import re
import subprocess

import pytest

from armorm_client import contract
from armorm_client.contract import ADMIN_HEADER
from armorm_client.perf import (
    mixed_conversations,
    perf_command,
    perf_environment,
    write_input_data,
    write_text_input_data,
)

pytestmark = pytest.mark.integration
# A smoke run per mode: perf_analyzer drives the live server and reports throughput. Stability is not asked for
# (1000 %): on a shared 2-core machine windows differ widely.
QUICK = ["--concurrency-range", "2", "--measurement-interval", "1000", "--max-trials", "6", "--stability-percentage",
         "1000"]
MODES = {"grpc": ("grpc", []), "grpc streaming": ("grpc", ["--streaming"]), "http": ("http", []),
         "system shared memory": ("grpc", ["--shared-memory", "system", "--output-shared-memory-size", "65536"])}


@pytest.fixture(scope="module")
def input_data(tmp_path_factory, tokenizer):
    directory = tmp_path_factory.mktemp("perf")
    conversations = mixed_conversations(8)
    return {contract.ENSEMBLE.name: write_input_data(directory / "messages.json", conversations),
            contract.TEXT_ENSEMBLE.name: write_text_input_data(
                directory / "text.json", [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations])}


@pytest.mark.parametrize("model", [spec.name for spec in contract.ENSEMBLES])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_perf_analyzer_drives_each_public_model_in_each_mode(server, input_data, model, mode):
    protocol, flags = MODES[mode]
    url = server.http_url if protocol == "http" else server.grpc_url
    extra = [*QUICK, *flags]
    if "--shared-memory" in flags:
        extra += ["-H", f"{ADMIN_HEADER}:{server.admin_key}"]
    command = perf_command(url, input_data[model], extra, model=model, protocol=protocol)
    done = subprocess.run(command, env=perf_environment(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    throughput = re.search(r"Throughput: ([0-9.]+) infer/sec", done.stdout)
    assert throughput and float(throughput.group(1)) > 0, done.stdout[-2000:]
