"""Floods and slow clients against one live `armorm-serve` with small limits (issue 16), over real loopback sockets.

What must hold under each attack: the server's memory (RSS of armorm-serve, tritonserver and the model processes)
grows by at most the budget + 64 MiB; no slow connection outlives the header or body timeouts; every good request
sent meanwhile is answered, its p99 within 2× the unattacked one; no process restarts. The full-size attacks
(100 × 60 MB bodies, 1,500 slowloris connections) are scripts/abuse_report.py.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from armorm.gateway.admission import INFERENCE_CHARGE
from armorm.gateway.stats import BUFFERED_BYTES, BUFFERED_BYTES_LIMIT, CONNECTIONS, REFUSED
from armorm.testing.abuse import (
    GOOD_BODY,
    GRPC_DRIP,
    GRPC_START,
    GoodClient,
    PeakRss,
    answer_to_headers,
    big_bodies,
    big_body,
    good_latencies,
    http_status,
    p99,
    run,
    slow_bodies,
    slowloris,
    tree_rss,
)
from armorm.testing.prometheus import scrape, total
from armorm.testing.serve_process import ServeProcess
from armorm_client import ArmoRMClient, InvalidConversationError, RetryPolicy
from armorm_client.contract import ADMIN_HEADER
from armorm_client.perf import perf_analyzer_binary, perf_environment

pytestmark = pytest.mark.integration

MiB = 1 << 20
MAX_REQUEST = 4 * MiB
BUDGET = INFERENCE_CHARGE * MAX_REQUEST * 4  # three of the largest requests at once (LARGE_SHARE), and room
TIMEOUT_S = 2.0  # header, body idle and rate grace
PER_ADDRESS = 200
ADMIN_KEY = "abuse-admin-key"
GOOD_GAP_S = 0.05
UNATTACKED_S = 3.0
CONTENTION_S = 1.0


@pytest.fixture(scope="module")
def target(exported_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    flags = ["--max-request-bytes", str(MAX_REQUEST), "--max-buffered-bytes", str(BUDGET),
             "--header-timeout", str(TIMEOUT_S), "--body-idle-timeout", str(TIMEOUT_S),
             "--body-rate-grace", str(TIMEOUT_S), "--max-connections-per-address", str(PER_ADDRESS)]
    with ServeProcess(exported_repository, tmp_path_factory.mktemp("abuse"), admin_key=ADMIN_KEY,
                      extra_args=flags) as server:
        good_latencies(server.http_url, 3)  # warm
        with GoodClient(server.http_url, GOOD_GAP_S) as quiet:
            time.sleep(UNATTACKED_S)
        server.unattacked_p99 = p99(quiet.latencies)
        server.pids = {server.process.pid, server.triton_pid()}
        yield server
        assert server.process.poll() is None and server.triton_pid() in server.pids, "a process restarted"


def during(server: ServeProcess, attack: Callable[[], object]) -> tuple[object, list[float]]:
    """Run `attack` while a good client in a process of its own scores every GOOD_GAP_S; (attack's result, the
    good calls' latencies). The good client raises if any of its calls failed."""
    with GoodClient(server.http_url, GOOD_GAP_S) as good:
        result = attack()
    return result, good.latencies


def assert_good_served(server: ServeProcess, latencies: list[float], attack: str) -> None:
    """Every good request answered; p99 within 2× the unattacked one. On a machine of few cores the attacker,
    the good client and the server share them, and the attacker's own CPU delays the rest: there the bound gets
    CONTENTION_S more (scripts/abuse_report.py reports the plain ratio)."""
    # GoodClient raises for any good call that failed; its first call comes before the attack starts.
    assert len(latencies) >= 2, f"{attack}: no good call was made while it lasted"
    allowance = 0.0 if (os.cpu_count() or 1) >= 8 else CONTENTION_S
    assert p99(latencies) <= 2 * server.unattacked_p99 + allowance, (
        f"{attack}: good requests' p99 {p99(latencies) * 1000:.0f} ms is over twice the unattacked "
        f"{server.unattacked_p99 * 1000:.0f} ms")


def gauge(server: ServeProcess, name: str, **labels: str) -> float:
    return total(scrape(server.metrics_url), name, **labels)


def test_a_flood_of_large_bodies_stays_within_the_memory_budget(target):
    host, port = target.http_url.split(":")
    body = big_body(MAX_REQUEST)
    before = tree_rss(target.process.pid)
    with PeakRss(target.process.pid) as peak:
        statuses, latencies = during(target, lambda: run(big_bodies(host, int(port), body, 40, 60)))
    growth = peak.peak - before
    assert growth <= BUDGET + 64 * MiB, f"the server grew by {growth / MiB:.0f} MiB (budget {BUDGET / MiB:.0f} MiB)"
    assert statuses[503] > 0 and set(statuses) <= {400, 503}, statuses  # 400: one conversation's byte limit
    assert_good_served(target, latencies, "large bodies")
    assert gauge(target, BUFFERED_BYTES) == 0, "the budget is given back"


def test_a_request_over_the_budget_is_refused_at_once_on_both_protocols(target):
    """Slow bodies hold the large requests' share of the budget: one more large HTTP request gets 503 with
    Retry-After before it sends a body byte, a large gRPC message UNAVAILABLE (both retryable), while small
    requests are still served; once the slow bodies are shed the budget is free again, and a client that was
    retrying gets through."""
    host, port = target.http_url.split(":")
    holder = threading.Thread(target=lambda: run(slow_bodies(host, int(port), 3, MAX_REQUEST, 0.5, TIMEOUT_S * 2)))
    holder.start()
    try:
        deadline = time.monotonic() + 5
        while gauge(target, BUFFERED_BYTES) < 3 * INFERENCE_CHARGE * MAX_REQUEST and time.monotonic() < deadline:
            time.sleep(0.05)
        status, head = run(answer_to_headers(host, int(port), MAX_REQUEST))
        assert status == 503 and "Retry-After: 1" in head, head
        tensor = grpcclient.InferInput("messages", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[b"x" * (MAX_REQUEST // 2)]], dtype=object))
        with pytest.raises(InferenceServerException) as refused:
            grpcclient.InferenceServerClient(target.grpc_url).infer("armorm", [tensor])
        assert refused.value.status() == "StatusCode.UNAVAILABLE" and "budget" in refused.value.message()
        assert http_status(f"http://{target.http_url}/v2/models/armorm/infer", GOOD_BODY,
                           {"Content-Type": "application/json"})[0] == 200
        # armorm_client retries the refusal (UNAVAILABLE) until the budget frees up: the call then reaches Triton,
        # whose tokenizer judges it (this 300 KB conversation is over its token limit).
        refused_before = total(scrape(target.metrics_url), REFUSED, reason="over_budget", protocol="grpc")
        patient = ArmoRMClient(target.grpc_url, retry=RetryPolicy(max_attempts=200, max_backoff_s=0.2))
        retried = ThreadPoolExecutor(1).submit(patient.score, [{"role": "user", "content": "hi"},
                                                               {"role": "assistant", "content": "x " * 150_000}])
    finally:
        holder.join()
    with pytest.raises(InvalidConversationError, match="tokens"):
        retried.result(timeout=60)
    patient.close()
    assert total(scrape(target.metrics_url), REFUSED, reason="over_budget", protocol="grpc") > refused_before, \
        "the client's first tries were refused and retried"
    assert gauge(target, BUFFERED_BYTES) == 0


def test_slowloris_connections_are_closed_at_the_header_timeout(target):
    host, port = target.http_url.split(":")
    (opened, held), latencies = during(target, lambda: run(slowloris(host, int(port), 300, 0.5, TIMEOUT_S + 1.5)))
    assert opened == 300 and held == 0, f"{held} of {opened} slow-header connections still held"
    assert_good_served(target, latencies, "slowloris")
    grpc_host, grpc_port = target.grpc_url.split(":")
    opened, held = run(slowloris(grpc_host, int(grpc_port), 50, 0.5, TIMEOUT_S + 1.5, GRPC_START, GRPC_DRIP))
    assert opened == 50 and held == 0, f"{held} of {opened} slow-preface gRPC connections still held"


def test_slow_bodies_are_shed(target):
    host, port = target.http_url.split(":")
    (opened, held), latencies = during(target, lambda: run(slow_bodies(host, int(port), 20, 100_000, 0.5,
                                                                       TIMEOUT_S + 2)))
    assert opened == 20 and held == 0, f"{held} of {opened} slow-body connections still held"
    assert_good_served(target, latencies, "slow bodies")


def test_connections_beyond_the_per_address_cap_are_refused(target):
    host, port = target.http_url.split(":")
    (opened, held), latencies = during(target, lambda: run(slowloris(host, int(port), PER_ADDRESS + 50, 5.0, 1.0)))
    assert held <= PER_ADDRESS, f"{held} connections held from one address; the cap is {PER_ADDRESS}"
    assert_good_served(target, latencies, "connections over the cap")
    deadline = time.monotonic() + TIMEOUT_S + 3
    while gauge(target, CONNECTIONS, listener="http") > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gauge(target, CONNECTIONS, listener="http") <= 1


def run_perf_analyzer(target: ServeProcess, protocol: str, key: str | None) -> tuple[int, str]:
    url = target.grpc_url if protocol == "grpc" else target.http_url
    command = [str(perf_analyzer_binary()), "-m", "armorm_backbone", "-u", url, "-i", protocol, "--input-data",
               "zero", "--shape", "input_ids:16", "--shared-memory", "system", "--output-shared-memory-size",
               str(MiB), "--concurrency-range", "1", "--measurement-interval", "1000", "--max-trials", "10",
               "--stability-percentage", "1000"]
    if key is not None:
        command += ["-H", f"{ADMIN_HEADER}:{key}"]
    done = subprocess.run(command, env=perf_environment(), capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout[-1500:] + done.stderr[-1500:]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_runs_with_system_shared_memory_given_the_admin_key(target, protocol):
    """perf_analyzer's shared-memory mode (its -H header carries the admin key on HTTP and gRPC alike), on the
    backbone step; tests/test_perf_analyzer.py drives both public models in this mode."""
    code, output = run_perf_analyzer(target, protocol, ADMIN_KEY)
    assert code == 0 and "Throughput:" in output, output
    code, output = run_perf_analyzer(target, protocol, None)
    assert code != 0, "without the admin key the shared-memory API must be refused"


def test_shared_memory_inference_on_the_ensemble_needs_the_admin_key(target):
    """System shared memory through the gateway with tritonclient: registration and inference with the input in a
    region work with the admin key, and the same calls without it are refused with a message naming the key."""
    client = httpclient.InferenceServerClient(target.http_url)
    admin = {ADMIN_HEADER: ADMIN_KEY}
    conversation = np.array([[b'[{"role": "user", "content": "Hi there"}, {"role": "assistant", '
                              b'"content": "Hello!"}]']], dtype=object)
    serialized = bytes(serialize_byte_tensor(conversation).item())  # Triton's BYTES layout: length, then bytes
    size = len(serialized)
    region = SharedMemory("abuse_input", create=True, size=size)  # POSIX shm_open("/abuse_input"), as Triton opens it
    try:
        region.buf[:size] = serialized
        with pytest.raises(InferenceServerException, match=ADMIN_HEADER):
            client.register_system_shared_memory("abuse_input", "/abuse_input", size)
        client.register_system_shared_memory("abuse_input", "/abuse_input", size, headers=admin)
        tensor = httpclient.InferInput("messages", [1, 1], "BYTES")
        tensor.set_shared_memory("abuse_input", size)
        with pytest.raises(InferenceServerException, match="shared memory"):
            client.infer("armorm", [tensor])
        in_region = client.infer("armorm", [tensor], headers=admin).as_numpy("score")
        plain = httpclient.InferInput("messages", [1, 1], "BYTES")
        plain.set_data_from_numpy(conversation)
        assert np.allclose(in_region, client.infer("armorm", [plain]).as_numpy("score"))
        client.unregister_system_shared_memory(headers=admin)
    finally:
        region.close()
        region.unlink()
        client.close()


def test_the_metrics_show_the_budget(target):
    assert gauge(target, BUFFERED_BYTES_LIMIT) == BUDGET
