"""The gateway against a live `armorm-serve`: only the ensemble is public for inference, and the HTTP side's kept
connections to tritonserver are reused, let go when idle, survive a restart and never hold a shutdown."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from armorm.gateway.stats import REFUSED
from armorm.gateway.upstream_pool import IDLE_CLOSE_S
from armorm.testing.processes import descendants
from armorm.testing.prometheus import scrape, total
from armorm.testing.serve_process import ServeProcess
from armorm_client import contract

pytestmark = pytest.mark.integration

GOOD = json.dumps([{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}])
STEPS = [step.name for step in contract.STEPS]


def http(url: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://{url}{path}", data=body, method="POST" if body else "GET",
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback test server
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def infer_body(text: str = GOOD) -> bytes:
    return json.dumps({"inputs": [{"name": "messages", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]}).encode()


def messages(text: str = GOOD) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("messages", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
    return [tensor]


def refused(server: ServeProcess, protocol: str, reason: str) -> float:
    return total(scrape(server.metrics_url), REFUSED, protocol=protocol, reason=reason)


# --- public inference: the ensemble only --------------------------------------------------------------------
def test_the_steps_answer_not_found_without_the_admin_key(server):
    before = refused(server, "grpc", "not_public"), refused(server, "http", "not_public")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    for step in STEPS:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(step, messages())
        assert caught.value.status() == "StatusCode.NOT_FOUND", step
        assert f"send requests to '{contract.ENSEMBLE.name}'" in caught.value.message(), step
        status, answer = http(server.http_url, f"/v2/models/{step}/infer", infer_body())
        assert status == 404 and "internal steps" in json.loads(answer)["error"], (step, answer)
        status, _ = http(server.http_url, f"/v2/models/{step}/versions/1/infer", infer_body())
        assert status == 404, step
    wrong = {"armorm-admin-key": "not-the-key"}
    status, _ = http(server.http_url, f"/v2/models/{contract.TOKENIZER.name}/infer", infer_body(), wrong)
    assert status == 404, "a wrong admin key opens no step"
    assert (refused(server, "grpc", "not_public") - before[0], refused(server, "http", "not_public") - before[1]) \
        == (len(STEPS), 2 * len(STEPS) + 1)
    assert client.infer(contract.ENSEMBLE.name, messages()).as_numpy("score").shape == (1, 1)
    client.close()


def test_streamed_requests_to_a_step_end_the_stream_with_not_found(server):
    import queue

    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer(contract.ENSEMBLE.name, messages())
    client.async_stream_infer(contract.TOKENIZER.name, messages())
    first, second = answers.get(timeout=60), answers.get(timeout=60)
    client.stop_stream()
    client.close()
    assert first[1] is None and first[0].as_numpy("score").shape == (1, 1)
    assert second[1] is not None and second[1].status() == "StatusCode.NOT_FOUND"


def test_holders_of_the_admin_key_reach_the_steps_unchecked(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tokens = client.infer(contract.TOKENIZER.name, messages(), headers=server.admin_headers)
    assert tokens.as_numpy("num_tokens")[0, 0] > 0
    status, answer = http(server.http_url, f"/v2/models/{contract.TOKENIZER.name}/infer", infer_body(),
                          {"armorm-admin-key": server.admin_key})
    assert status == 200, answer
    client.close()


# --- the HTTP side's kept connections to tritonserver -------------------------------------------------------
@pytest.fixture(scope="module")
def own_server(exported_repository, tmp_path_factory):
    """A server of this module's own: its tritonserver is killed, then it is stopped with SIGTERM."""
    with ServeProcess(exported_repository, tmp_path_factory.mktemp("gateway-live"),
                      extra_args=["--exit-timeout", "60"]) as running:
        yield running


def triton_http_socket(server: ServeProcess) -> str:
    pid = server.triton_pid()
    for argument in descendants(server.process.pid)[pid].split():
        if argument.startswith("--http-address=unix:"):
            return argument.split(":", 1)[1]
    raise AssertionError("tritonserver's HTTP socket not found")


def connections_to(socket_path: str) -> set[int]:
    """Inodes of the connected sockets bound to `socket_path`: tritonserver's end of each open connection."""
    found = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == socket_path and fields[5] == "03":  # SS_CONNECTED
            found.add(int(fields[6]))
    return found


def test_http_calls_reuse_a_kept_connection_that_closes_when_idle(own_server):
    path = triton_http_socket(own_server)
    seen: list[set[int]] = []
    for _ in range(30):
        status, _ = http(own_server.http_url, "/v2/models/armorm/infer", infer_body())
        assert status == 200
        seen.append(connections_to(path))
    assert sum(1 for inodes in seen if inodes) >= 25, f"connections were not kept: {seen}"
    assert len(set().union(*seen)) <= 3, f"30 sequential calls opened {len(set().union(*seen))} connections"
    deadline = time.monotonic() + 10 * IDLE_CLOSE_S + 5
    while connections_to(path):
        assert time.monotonic() < deadline, "an idle connection was kept open (it would hold Triton's shutdown)"
        time.sleep(0.2)


def test_http_works_again_after_tritonserver_is_killed_and_restarted(own_server):
    assert http(own_server.http_url, "/v2/models/armorm/infer", infer_body())[0] == 200  # a connection is kept
    first = own_server.triton_pid()
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 240
    while True:
        status, answer = http(own_server.http_url, "/v2/models/armorm/infer", infer_body())
        if status == 200:
            break
        assert status == 503, (status, answer)  # retryable while Triton restarts, never a 500
        assert time.monotonic() < deadline, "HTTP never came back after the restart"
        time.sleep(0.5)
    assert own_server.triton_pid() not in (None, first)
    for _ in range(10):
        assert http(own_server.http_url, "/v2/models/armorm/infer", infer_body())[0] == 200


def test_sigterm_is_not_held_by_kept_connections_under_steady_probes(own_server):
    """Probes keep HTTP connections busy through the drain: kept, they would hold tritonserver's shutdown for
    its whole exit timeout (60 s here)."""
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            try:
                http(own_server.http_url, "/v2/health/live")
            except OSError:
                pass  # the gateway has closed
            time.sleep(0.02)

    probes = [threading.Thread(target=probe) for _ in range(2)]
    for thread in probes:
        thread.start()
    try:
        time.sleep(1)
        start = time.monotonic()
        own_server.process.send_signal(signal.SIGTERM)
        assert own_server.process.wait(120) == 0, own_server.log_tails()
        seconds = time.monotonic() - start
    finally:
        stop.set()
        for thread in probes:
            thread.join()
    assert seconds < 30, f"armorm-serve took {seconds:.0f} s to stop"
