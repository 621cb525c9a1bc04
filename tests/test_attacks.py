"""What a careless or hostile client sends, against a live `armorm-serve` (gateway + tritonserver).

- A matrix of bad requests over gRPC and HTTP: each fails alone with its exact status while good neighbours,
  sent at the same moment, are scored exactly as alone; tritonserver is never restarted.
- Floods of short client deadlines, a Ctrl-C of `armorm-score` mid-file, oversized and form-encoded bodies on
  every port, every subset of outputs.
- The Triton 2.51 crashes the gateway shields, reproduced against a bare tritonserver as strict known failures:
  should an upgrade fix them, those tests fail and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import json
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from armorm.gateway.stats import ABANDONED, IN_FLIGHT
from armorm.launcher.triton_process import TritonServer
from armorm.testing.prometheus import scrape, total
from armorm.testing.serve_process import ServeProcess
from armorm_client import NO_RETRIES, ArmoRMClient, contract
from tests.conversations import TEST_MAX_TOKENS, varied_conversations
from tests.test_server import assert_same

pytestmark = pytest.mark.integration

NEIGHBOURS = varied_conversations()[:6]
OK = "OK"
INVALID = "StatusCode.INVALID_ARGUMENT"
GOOD = json.dumps([{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]).encode()


@pytest.fixture(scope="module")
def attacked(server):
    """The session's server: every attack must leave it serving exactly, here and for every module after this one.
    The pid of its tritonserver, taken before the first attack, tells a crash (the supervisor's restart) apart."""
    server.first_triton_pid = server.triton_pid()
    return server


@pytest.fixture(scope="module")
def expected_neighbours(reference):
    return [reference.score(m) for m in NEIGHBOURS]


# --- senders: each returns the outcome as a status name (gRPC) or code (HTTP) -------------------------------
def grpc_infer(url: str, inputs: list, outputs: list | None = None, model: str = "armorm", **options) -> str:
    client = grpcclient.InferenceServerClient(url)
    try:
        client.infer(model, inputs, outputs=outputs, **options)
        return OK
    except InferenceServerException as err:
        return err.status()
    finally:
        client.close()


def grpc_raw(url: str, message: bytes) -> str:
    """A hand-made ModelInfer message, as a client library with a bug (or an attacker) would send it."""
    import grpc

    with grpc.insecure_channel(url) as channel:
        try:
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(message, timeout=60)
            return OK
        except grpc.RpcError as err:
            return str(err.code())


def raw_bytes_request(*raw_contents: bytes, rows: int = 1) -> bytes:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="armorm")
    tensor = request.inputs.add(name="messages", datatype="BYTES")
    tensor.shape.extend([rows, 1])
    request.raw_input_contents.extend(raw_contents)
    return request.SerializeToString()


def messages_tensor(rows: list[bytes], name: str = "messages") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, [len(rows), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[row] for row in rows], dtype=object).reshape(len(rows), 1))
    return tensor


def http_post(url: str, path: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST") -> int:
    request = urllib.request.Request(f"http://{url}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - loopback test server
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def kserve_body(rows: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 JSON request for the messages rows; rows that are not UTF-8 travel as binary tensor data."""
    try:
        texts = [row.decode("utf-8") for row in rows]
    except UnicodeDecodeError:
        binary = b"".join(struct.pack("<I", len(row)) + row for row in rows)
        header = json.dumps({"inputs": [{"name": "messages", "shape": [len(rows), 1], "datatype": "BYTES",
                                         "parameters": {"binary_data_size": len(binary)}}]}).encode()
        return header + binary, {"Inference-Header-Content-Length": str(len(header))}
    body = {"inputs": [{"name": "messages", "shape": [len(rows), 1], "datatype": "BYTES", "data": texts}]}
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Attack:
    name: str
    grpc: Callable[[str], str] | None = None
    http: Callable[[str], int] | None = None
    grpc_status: str = INVALID
    http_status: int = 400

    def __post_init__(self) -> None:  # an attack sent over no protocol would drop out of both matrices unseen
        if self.grpc is None and self.http is None:
            raise ValueError(f"attack {self.name!r} has no sender")


def content(name: str, *rows: bytes) -> Attack:
    """A bad `messages` payload, sent the same way over both protocols."""
    return Attack(name, grpc=lambda url: grpc_infer(url, [messages_tensor(list(rows))]),
                  http=lambda url: http_post(url, "/v2/models/armorm/infer", *kserve_body(list(rows))))


def http_only(name: str, body: bytes, status: int = 400, path: str = "/v2/models/armorm/infer",
              headers: dict[str, str] | None = None) -> Attack:
    return Attack(name, http=lambda url: http_post(url, path, body, headers), http_status=status)


def turns(*pairs: tuple[object, object]) -> bytes:
    return json.dumps([{"role": role, "content": text} for role, text in pairs]).encode()


def gzip_bomb(size: int) -> bytes:
    """`size` zero bytes, gzip-compressed a MiB at a time (about a thousandth of the size)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * (1 << 20)
    return b"".join(compressor.compress(chunk) for _ in range(size >> 20)) + compressor.flush()


def infer_json(data: object, datatype: str = "BYTES", shape: list | None = None) -> bytes:
    return json.dumps({"inputs": [{"name": "messages", "shape": shape or [1, 1], "datatype": datatype,
                                   "data": data}]}).encode()


ATTACKS = [
    # The messages payload itself: validation in the tokenizer step (INVALID_ARGUMENT / 400).
    content("not JSON", b"this is not json"),
    content("truncated JSON", b'[{"role": "user", "content": "hi"'),
    content("empty payload", b""),
    content("whitespace only", b"   \n\t "),
    content("trailing garbage", GOOD + b" and more"),
    content("byte order mark", "\ufeff".encode() + GOOD),
    content("JSON object", b'{"role": "user", "content": "hi"}'),
    content("JSON string", b'"hello"'),
    content("JSON number", b"42"),
    content("JSON null", b"null"),
    content("empty list", b"[]"),
    content("list of strings", b'["hi", "there"]'),
    content("missing role", b'[{"content": "q"}, {"role": "assistant", "content": "a"}]'),
    content("missing content", b'[{"role": "user"}, {"role": "assistant", "content": "a"}]'),
    content("role is a number", turns((1, "q"), ("assistant", "a"))),
    content("content is a number", turns(("user", 5), ("assistant", "a"))),
    content("content is null", turns(("user", None), ("assistant", "a"))),
    content("content is an object", turns(("user", {"text": "q"}), ("assistant", "a"))),
    content("content is a list", turns(("user", ["q"]), ("assistant", "a"))),
    content("content is NaN", b'[{"role": "user", "content": NaN}, {"role": "assistant", "content": "a"}]'),
    content("content is 1e999", b'[{"role": "user", "content": 1e999}, {"role": "assistant", "content": "a"}]'),
    content("unknown role", turns(("wizard", "q"), ("assistant", "a"))),
    content("role in capitals", turns(("USER", "q"), ("assistant", "a"))),
    content("ends with the user", turns(("user", "q"))),
    content("assistant only", turns(("assistant", "a"))),
    content("lone high surrogate", b'[{"role": "user", "content": "hi \\ud800"}, '
                                   b'{"role": "assistant", "content": "a"}]'),
    content("lone low surrogate in role", b'[{"role": "user\\udc00", "content": "q"}, '
                                          b'{"role": "assistant", "content": "a"}]'),
    content("nested 2000 deep", b"[" * 2000 + b"]" * 2000),
    content("nested inside a turn", b'[{"role": "user", "content": "q", "x": ' + b"[" * 3000 + b"]" * 3000
            + b'}, {"role": "assistant", "content": "a"}]'),
    content("invalid UTF-8", b'[{"role": "user", "content": "\xff\xfe"}, {"role": "assistant", "content": "a"}]'),
    content("over max_tokens", turns(("user", "word " * (TEST_MAX_TOKENS + 50)), ("assistant", "ok"))),
    content("over max_bytes", turns(("user", "x" * (1 << 20)), ("assistant", "ok"))),
    content("over max_messages", turns(*[("user", "q"), ("assistant", "a")] * 130)),
    content("one bad row of three", GOOD, GOOD, b"[]"),
    # The request around it, as Triton checks it.
    Attack("unknown model", grpc=lambda url: grpc_infer(url, [messages_tensor([GOOD])], model="nope"),
           http=lambda url: http_post(url, "/v2/models/nope/infer", *kserve_body([GOOD])),
           grpc_status="StatusCode.NOT_FOUND", http_status=404),
    Attack("unknown model version", grpc=lambda url: grpc_infer(url, [messages_tensor([GOOD])], model_version="7"),
           http=lambda url: http_post(url, "/v2/models/armorm/versions/7/infer", *kserve_body([GOOD])),
           grpc_status="StatusCode.NOT_FOUND", http_status=404),
    Attack("wrong input name", grpc=lambda url: grpc_infer(url, [messages_tensor([GOOD], "msgs")]),
           http=lambda url: http_post(url, "/v2/models/armorm/infer",
                                      kserve_body([GOOD])[0].replace(b'"messages"', b'"msgs"'))),
    Attack("no inputs", grpc=lambda url: grpc_infer(url, []),
           http=lambda url: http_post(url, "/v2/models/armorm/infer", b'{"inputs": []}')),
    Attack("an extra input", grpc=lambda url: grpc_infer(url, [messages_tensor([GOOD]), messages_tensor([GOOD], "x")])),
    Attack("INT32 instead of BYTES", grpc=lambda url: grpc_infer(url, [_int32_messages()]),
           http=lambda url: http_post(url, "/v2/models/armorm/infer", infer_json([1], "INT32"))),
    Attack("shape [1, 2]", grpc=lambda url: grpc_infer(url, [_shaped([[GOOD, GOOD]])]),
           http=lambda url: http_post(url, "/v2/models/armorm/infer", infer_json([GOOD.decode()] * 2, shape=[1, 2]))),
    Attack("shape [1]", grpc=lambda url: grpc_infer(url, [_shaped([GOOD])])),
    Attack("zero rows", grpc=lambda url: grpc_infer(url, [_shaped(np.zeros((0, 1), dtype=object))]),
           http=lambda url: http_post(url, "/v2/models/armorm/infer", infer_json([], shape=[0, 1]))),
    Attack("65 rows (over max batch)", grpc=lambda url: grpc_infer(url, [messages_tensor([GOOD] * 65)]),
           http=lambda url: http_post(url, "/v2/models/armorm/infer", *kserve_body([GOOD] * 65))),
    Attack("unknown output", grpc=lambda url: grpc_infer(url, [messages_tensor([GOOD])],
                                                         [grpcclient.InferRequestedOutput("nope")]),
           http=lambda url: http_post(url, "/v2/models/armorm/infer", json.dumps(
               {**json.loads(kserve_body([GOOD])[0]), "outputs": [{"name": "nope"}]}).encode())),
    Attack("raw BYTES length prefix beyond the data",
           grpc=lambda url: grpc_raw(url, raw_bytes_request(b"\xff\xff\xff\x7f"))),
    Attack("raw BYTES truncated length prefix", grpc=lambda url: grpc_raw(url, raw_bytes_request(b"\x05\x00"))),
    Attack("raw BYTES fewer strings than the shape", grpc=lambda url: grpc_raw(url, raw_bytes_request(
        struct.pack("<I", len(GOOD)) + GOOD, rows=2))),
    Attack("raw BYTES more strings than the shape", grpc=lambda url: grpc_raw(url, raw_bytes_request(
        (struct.pack("<I", len(GOOD)) + GOOD) * 2))),
    Attack("two raw contents for one input", grpc=lambda url: grpc_raw(url, raw_bytes_request(
        struct.pack("<I", len(GOOD)) + GOOD, b""))),
    Attack("70 MB message", grpc=lambda url: grpc_infer(url, [messages_tensor([b"x" * (70 << 20)])]),
           grpc_status="StatusCode.RESOURCE_EXHAUSTED"),
    Attack("not a protobuf message", grpc=lambda url: grpc_raw(url, b"\xff\xff garbage")),
    # Triton honours a request's own timeout only under a queue policy, and any queue policy stalls its scheduler
    # (tests/test_scheduling.py): the parameter has no effect, the request is scored; callers set a gRPC deadline.
    Attack("server-side timeout of 1 µs", grpc=lambda url: grpc_infer(url, [messages_tensor([GOOD])], timeout=1),
           grpc_status="OK"),
    # HTTP bodies that Triton 2.51 answers with 500 (or a crash); the gateway answers 400/413/404.
    http_only("body is a JSON array", b"[1, 2]"),
    http_only("body is truncated JSON", b'{"inputs": [{"name": "messages"'),
    http_only("BYTES data as numbers", infer_json([5])),
    http_only("BYTES data as objects", infer_json([{"a": 1}])),
    http_only("BYTES data as null", infer_json([None])),
    http_only("data count differs from shape", infer_json([GOOD.decode()] * 3)),
    http_only("unknown datatype", infer_json([1], "COMPLEX64")),
    http_only("negative shape", infer_json([GOOD.decode()], shape=[-1, 1])),
    http_only("inputs is an object", b'{"inputs": {"name": "messages"}}'),
    http_only("data nested 100 deep", infer_json(json.loads("[" * 100 + "]" * 100))),
    http_only("header length beyond the body", b"{}", headers={"Inference-Header-Content-Length": "99"}),
    http_only("binary size beyond the body", json.dumps({"inputs": [{"name": "messages", "shape": [1, 1],
              "datatype": "BYTES", "parameters": {"binary_data_size": 4}}]}).encode() + b"\x00",
              headers={"Inference-Header-Content-Length": str(len(json.dumps({"inputs": [{"name": "messages",
                       "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 4}}]})))}),
    http_only("string length prefix beyond the data",
              (lambda header: header + b"\xff\xff\xff\x7f")(json.dumps({"inputs": [{"name": "messages",
               "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 4}}]}).encode()),
              headers={"Inference-Header-Content-Length": str(len(json.dumps({"inputs": [{"name": "messages",
                       "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 4}}]})))}),
    http_only("gzip bomb (1 GiB inflated)", gzip_bomb(1 << 30), 413,
              headers={"Content-Encoding": "gzip"}),
    http_only("70 MB body", b"x" * (70 << 20), 413),
    http_only("6 MB form body to inference", b"x" * 6_000_000,
              headers={"Content-Type": "application/x-www-form-urlencoded"}),
    http_only("6 MB form body to a health path", b"x" * 6_000_000, 404, "/v2/health/ready",
              {"Content-Type": "application/x-www-form-urlencoded"}),
    http_only("unknown path", b"{}", 404, "/v2/../../etc/passwd"),
    # Open APIs take no big body: a key-less caller must not make the gateway buffer MBs per request.
    Attack("1 MB body on an open GET", http=lambda url: http_post(url, "/v2/health/ready", b"x" * (1 << 20),
                                                                  method="GET"), http_status=413),
]


def _shaped(rows) -> grpcclient.InferInput:
    array = np.array(rows, dtype=object)
    tensor = grpcclient.InferInput("messages", list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def _int32_messages() -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("messages", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.zeros((1, 1), np.int32))
    return tensor


def under_fire(server: ServeProcess, expected, send: Callable[[], object]) -> object:
    """Send one bad request while the good neighbours are in flight; they must be scored as alone."""
    with ArmoRMClient(server.grpc_url, retry=NO_RETRIES, timeout_s=120) as client, ThreadPoolExecutor(2) as pool:
        neighbours = pool.submit(client.score_batch, NEIGHBOURS, max_in_flight=len(NEIGHBOURS),
                                 return_exceptions=True)
        outcome = pool.submit(send)
        for index, (result, reference) in enumerate(zip(neighbours.result(), expected, strict=True)):
            assert not isinstance(result, Exception), f"neighbour {index} failed: {result!r}"
            assert_same(result, reference, f"neighbour {index}")
        answer = outcome.result()
    assert server.triton_pid() == server.first_triton_pid, "tritonserver was restarted: it crashed"
    return answer


@pytest.mark.parametrize("attack", [a for a in ATTACKS if a.grpc], ids=lambda a: a.name)
def test_bad_grpc_request_fails_alone(attacked, expected_neighbours, attack):
    assert under_fire(attacked, expected_neighbours, lambda: attack.grpc(attacked.grpc_url)) == attack.grpc_status


@pytest.mark.parametrize("attack", [a for a in ATTACKS if a.http], ids=lambda a: a.name)
def test_bad_http_request_fails_alone(attacked, expected_neighbours, attack):
    assert under_fire(attacked, expected_neighbours, lambda: attack.http(attacked.http_url)) == attack.http_status


def test_odd_but_valid_unicode_is_scored(attacked, reference):
    odd = ["NUL \u0000 inside", "right-to-left \u202e override", "emoji 👩‍👩‍👧 family", "combining e\u0301\u0301",
           "private use \ue000", "noncharacter \uffff", "astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"]
    with ArmoRMClient(attacked.grpc_url, retry=NO_RETRIES) as client:
        for text in odd:
            messages = [{"role": "user", "content": text}, {"role": "assistant", "content": text[::-1]}]
            assert_same(client.score(messages), reference.score(messages), repr(text))


def test_a_bad_row_is_named(attacked):
    client = grpcclient.InferenceServerClient(attacked.grpc_url)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("armorm", [messages_tensor([GOOD, GOOD, b"[]"])])
    assert caught.value.status() == INVALID
    assert "row 2 of 3: messages is an empty list" in caught.value.message()


OUTPUT_NAMES = [t.name for t in contract.ENSEMBLE.outputs]


def test_every_subset_of_outputs_is_answered(attacked):
    client = grpcclient.InferenceServerClient(attacked.grpc_url)
    full = client.infer("armorm", [messages_tensor([GOOD, GOOD])])
    served = [output.name for output in client.get_model_metadata("armorm").outputs]
    assert sorted(served) == sorted(OUTPUT_NAMES), "the server's outputs are the contract's: every subset is tried"
    subsets = [s for k in range(1, len(OUTPUT_NAMES) + 1) for s in itertools.combinations(OUTPUT_NAMES, k)]
    for subset in subsets:
        result = client.infer("armorm", [messages_tensor([GOOD, GOOD])],
                              outputs=[grpcclient.InferRequestedOutput(name) for name in subset])
        for name in OUTPUT_NAMES:
            if name in subset:
                np.testing.assert_array_equal(result.as_numpy(name), full.as_numpy(name), err_msg=f"{subset}")
            else:
                assert result.as_numpy(name) is None, f"{name} was not asked for in {subset}"
    body = json.dumps({**json.loads(kserve_body([GOOD])[0]), "outputs": [{"name": "score"}]}).encode()
    request = urllib.request.Request(f"http://{attacked.http_url}/v2/models/armorm/infer", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback test server
        answer = json.loads(response.read())
    assert [o["name"] for o in answer["outputs"]] == ["score"]
    assert abs(answer["outputs"][0]["data"][0] - float(full.as_numpy("score")[0, 0])) <= 1e-6


async def deadline_burst(url: str, count: int, deadline_s: float) -> dict[str, int]:
    import tritonclient.grpc.aio as aio

    long_turns = turns(("user", "tell me more " * 60), ("assistant", "Here is more. " * 40))
    client = aio.InferenceServerClient(url)

    async def one() -> str:
        try:
            await client.infer("armorm", [messages_tensor([long_turns])], client_timeout=deadline_s)
            return OK
        except InferenceServerException as err:
            return err.status()

    outcomes = await asyncio.gather(*[one() for _ in range(count)])
    await client.close()
    return {status: outcomes.count(status) for status in set(outcomes)}


def wait_until_idle(server: ServeProcess, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while total(scrape(server.metrics_url), IN_FLIGHT) > 0:
        assert time.monotonic() < deadline, "abandoned calls never left the model server"
        time.sleep(0.1)


def test_floods_of_short_deadlines_do_not_crash_the_server(attacked, expected_neighbours):
    abandoned_before = total(scrape(attacked.metrics_url), ABANDONED)
    for _ in range(3):
        outcomes = asyncio.run(deadline_burst(attacked.grpc_url, 3000, 1.0))
        assert outcomes.get("StatusCode.DEADLINE_EXCEEDED", 0) > 0, outcomes
    assert total(scrape(attacked.metrics_url), ABANDONED) > abandoned_before
    wait_until_idle(attacked)
    under_fire(attacked, expected_neighbours, lambda: None)  # same tritonserver, exact scores


def test_ctrl_c_of_the_cli_mid_file_leaves_the_server_serving(attacked, expected_neighbours, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"messages": varied_conversations()[i % 20]}) for i in range(6000)))
    cli = subprocess.Popen([sys.executable, "-m", "armorm_client", str(rows), "--url", attacked.grpc_url],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while total(scrape(attacked.metrics_url), IN_FLIGHT) < 16:
            assert cli.poll() is None and time.monotonic() < deadline, cli.stderr.read()
            time.sleep(0.05)
        cli.send_signal(signal.SIGINT)
        cli.wait(60)
    finally:  # a CLI that outlived a failure here would go on loading the shared server for the tests after it
        if cli.poll() is None:
            cli.kill()
    wait_until_idle(attacked)
    under_fire(attacked, expected_neighbours, lambda: None)


def test_every_port_survives_large_form_bodies(attacked):
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    body = b"x" * 6_000_000
    metrics_port = attacked.metrics_url.split(":")[2].split("/")[0]
    assert http_post(f"127.0.0.1:{metrics_port}", "/metrics", body, form) == 404
    assert http_post(attacked.http_url, "/v2/models/armorm/infer", body, form) == 400
    assert http_post(attacked.http_url, "/v2/repository/index", body, form) == 401
    with pytest.raises((OSError, http.client.HTTPException)):  # the gRPC port spoken to in HTTP/1.1: refused at
        http_post(attacked.grpc_url, "/", body, form)  # the protocol level (broken pipe here), never an HTTP status
    assert attacked.triton_pid() == attacked.first_triton_pid
    with ArmoRMClient(attacked.grpc_url, retry=NO_RETRIES) as client:
        assert client.score(NEIGHBOURS[0]).num_tokens > 0


# --- Triton 2.51 without the gateway: the upstream crashes, kept as strict known failures ------------------
@pytest.fixture
def bare_triton(exported_repository, tmp_path):
    """tritonserver alone on loopback TCP, as it would be exposed without the gateway."""
    with TritonServer(exported_repository, log_path=tmp_path / "triton.log") as server:
        yield server


@pytest.mark.xfail(strict=True, reason="upstream triton-inference-server/server#5840 (open in every release): "
                                        "libevhtp parses a form-encoded body into stack arrays of its size")
@pytest.mark.parametrize("port", ["http", "metrics"])
def test_bare_triton_survives_a_large_form_body(bare_triton, port):
    target = bare_triton.http_url if port == "http" else f"127.0.0.1:{bare_triton.metrics_port}"
    try:
        http_post(target, "/v2/health/ready", b"x" * 6_000_000, {"Content-Type": "application/x-www-form-urlencoded"})
    except OSError:
        pass  # the connection dies with the server
    with contextlib.suppress(subprocess.TimeoutExpired):
        bare_triton.process.wait(1)  # a crash ends the wait at once; a survivor is given a second
    assert bare_triton.process.poll() is None, f"tritonserver died with code {bare_triton.process.returncode}"


# Not strict: a race. Alone it crashed 2.51 within two bursts in every run seen here, but inside the full suite it
# once survived all 20; a strict marker would fail CI at random. The form-body crash above is deterministic.
# A non-strict known failure cannot fail, so it is no check for `make test`: it runs in `make test-slow`, where an
# XPASS in the summary says an upgrade may have fixed the race (the gateway's own flood test runs in every run).
@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="upstream triton-inference-server/server#7368 (fixed in 2.53 / NGC 24.12) "
                                         "and #8034 (fixed in 2.57 / NGC 25.04): gRPC cancellation races")
def test_bare_triton_survives_floods_of_short_deadlines(bare_triton):
    # Up to 20 bursts of 0.5 s deadlines; a server that survives them costs about 30 s here.
    for _ in range(20):
        try:
            asyncio.run(deadline_burst(bare_triton.grpc_url, 3000, 0.5))
        except Exception:  # noqa: BLE001 - the server vanished under the burst
            pass
        time.sleep(0.5)
        assert bare_triton.process.poll() is None, f"tritonserver died with code {bare_triton.process.returncode}"


def test_streaming_inference_passes_through_with_per_request_errors(attacked, expected_neighbours):
    import queue

    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(attacked.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    for messages in NEIGHBOURS[:3]:
        client.async_stream_infer("armorm", [messages_tensor([json.dumps(messages).encode()])])
    answers = [results.get(timeout=60) for _ in range(3)]
    for (result, error), reference in zip(answers, expected_neighbours):
        assert error is None, error
        assert abs(float(result.as_numpy("score")[0, 0]) - reference.score) <= 1e-4
    client.async_stream_infer("armorm", [_shaped([[b"not json"]])])
    result, error = results.get(timeout=60)
    assert result is None and "not valid JSON" in str(error)
    client.async_stream_infer("armorm", [messages_tensor([json.dumps(NEIGHBOURS[0]).encode()])])
    result, error = results.get(timeout=60)
    assert error is None and abs(float(result.as_numpy("score")[0, 0]) - expected_neighbours[0].score) <= 1e-4
    client.stop_stream()
    client.close()
    assert attacked.triton_pid() == attacked.first_triton_pid
    wait_until_idle(attacked, timeout=30)
