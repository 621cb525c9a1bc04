"""gRPC across replicas, against two real servers: one client channel pinned to one address sends every call
there (what a ClusterIP Service gives a long-lived client); a target naming several addresses (what a headless
Service's DNS name resolves to) sends calls round-robin to all of them; and a server that ages connections out
(--max-connection-age) makes clients reconnect without failing a call."""

import time
from pathlib import Path

import pytest

from armorm.gateway.stats import REQUESTS
from armorm.testing.prometheus import scrape, total
from armorm.testing.serve_process import ServeProcess
from armorm_client import ArmoRMClient
from tests.conversations import varied_conversations

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def second_server(exported_repository, tmp_path_factory):
    with ServeProcess(exported_repository, tmp_path_factory.mktemp("second"),
                      extra_args=["--max-connection-age", "1"]) as running:
        yield running


def inference_calls(server) -> float:
    return total(scrape(server.metrics_url), REQUESTS, protocol="grpc", api="inference")


def calls_during(servers, work) -> list[float]:
    before = [inference_calls(s) for s in servers]
    work()
    return [inference_calls(s) - b for s, b in zip(servers, before)]


def test_one_address_pins_every_call_to_one_server(server, second_server):
    conversation = varied_conversations()[0]

    def work():
        with ArmoRMClient(server.grpc_url) as client:
            for _ in range(20):
                client.score(conversation)

    assert calls_during([server, second_server], work) == [20, 0]


def test_a_target_with_several_addresses_spreads_calls_round_robin(server, second_server):
    conversation = varied_conversations()[0]
    target = f"ipv4:{server.grpc_url},{second_server.grpc_url}"
    with ArmoRMClient(server.grpc_url) as alone:
        expected = alone.score(conversation).score

    def work():
        with ArmoRMClient(target) as client:
            scores = [client.score(conversation).score for _ in range(40)]
        assert scores == pytest.approx([expected] * 40, abs=1e-5)

    first, second = calls_during([server, second_server], work)
    assert first + second == 40
    assert min(first, second) >= 15, f"round robin should split 40 calls about evenly, got {first} and {second}"


def client_ports_to(port: int) -> set[int]:
    """Local ports of the established TCP connections to `port` (gRPC's sockets are IPv6 with mapped IPv4
    addresses, so /proc/net/tcp6 as well as tcp)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, remote, state = line.split()[1:4]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def test_aged_out_connections_reconnect_without_failing_a_call(second_server):
    """--max-connection-age 1: the server closes each connection after a second; the client reconnects (a new
    connection, so behind a Service a new choice of replica) and every call succeeds."""
    conversation = varied_conversations()[1]
    port = int(second_server.grpc_url.rsplit(":", 1)[1])
    seen: set[int] = set()
    with ArmoRMClient(second_server.grpc_url) as client:
        deadline, answered = time.monotonic() + 5.0, 0
        while time.monotonic() < deadline and (answered < 5 or len(seen) < 3):  # done once both are seen
            assert client.score(conversation).num_tokens > 0
            answered += 1
            seen |= client_ports_to(port)
    assert answered >= 5
    assert len(seen) >= 3, f"connections should be replaced about every second; saw {len(seen)} in 5 s"
