"""One reading: the gateway's checks and Triton must read a request the same way (docs/operations.md, Security).

A corpus of tricky but valid encodings (escaped keys and values, keys given twice at each level, a BOM, odd
whitespace, big and negative-zero numbers, binary tensors with each header variant; on gRPC fields and map keys
given twice, unknown fields, raw against typed contents) is sent to the session's live server, without the admin
key. For each request the verdict is one of:

- `refused:<reason>`: the gateway answered it itself, counted on armorm_gateway_refused_total with that reason;
- `same`: it reached Triton and got exactly the answer (scores, or error text) of the gateway's own reading of it
  re-encoded plainly (Python's `json.loads` → `json.dumps`, or protobuf parse → serialize), so what Triton ran is
  what the gateway checked;
- anything else names the difference, and fails.
"""

from __future__ import annotations

import gzip
import http.client
import json
import struct
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2
from tritonclient.utils import triton_to_np_dtype

from armorm.gateway.stats import REFUSED
from armorm.testing.prometheus import scrape
from armorm_client import contract

pytestmark = pytest.mark.integration

HEADER_LENGTH = "Inference-Header-Content-Length"
INFER = "/v2/models/armorm/infer"
FIRST = json.dumps([{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}])
SECOND = json.dumps([{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Teal 🦚, é"}])


def messages(data: object, **extra: object) -> dict:
    return {"name": "messages", "shape": [1, 1], "datatype": "BYTES", "data": data, **extra}


def plain(*inputs: dict, **top: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **top}).encode()


def escaped(text: str) -> str:
    """Every character of `text` as a \\u escape (a JSON string's content, without quotes)."""
    return "".join(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else json.dumps(c)[1:-1] for c in text)


def binary(rows: list[str], header_extra: str = "", length_of: Callable[[int], str] = str, **tensor_extra: object,
           ) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    """A body with the rows as binary tensor data after its JSON, and its Inference-Header-Content-Length."""
    data = b"".join(struct.pack("<I", len(r.encode())) + r.encode() for r in rows)
    header = (json.dumps({"inputs": [{"name": "messages", "shape": [len(rows), 1], "datatype": "BYTES",
                                      "parameters": {"binary_data_size": len(data)}, **tensor_extra}]})
              + header_extra).encode()
    return header + data, ((HEADER_LENGTH, length_of(len(header))),)


SHM_ESCAPED = (b'{"inputs": [{"name": "messages", "shape": [1, 1], "datatype": "BYTES", "parameters": '
               b'{"shared_memory_regio\\u006e": "probe_region", "shared_memory_byte_size": 64}}]}')
INT64_INPUT = json.dumps({"name": "messages", "shape": [1, 1], "datatype": "INT64", "data": [7]})


@dataclass(frozen=True)
class HttpCase:
    name: str
    body: bytes
    expected: str
    headers: tuple[tuple[str, str], ...] = ()
    path: str = INFER


_binary_body, _binary_headers = binary([FIRST, SECOND])
_padded_body, _padded_headers = binary([FIRST], header_extra=" \t\r\n ")
_zeros_body, _zeros_headers = binary([FIRST], length_of=lambda n: f"000{n}")
_both_body, _both_headers = binary([FIRST], data=[SECOND])
HTTP_CASES = (
    # Read the same by both: Triton runs what the gateway checked.
    HttpCase("escaped value", f'{{"inputs": [{{"name": "messages", "shape": [1, 1], "datatype": "BYTES", '
                              f'"data": ["{escaped(SECOND)}"]}}]}}'.encode(), "same"),
    HttpCase("escaped keys", b'{"\\u0069nputs": [{"n\\u0061me": "messages", "sh\\u0061pe": [1, 1], '
                             b'"datatype": "BYTES", "d\\u0061ta": [' + json.dumps(FIRST).encode() + b"]}]}", "same"),
    HttpCase("odd whitespace", b'\r\n\t {\t"inputs"\r:\n[ {"name" :"messages","shape":[\t1 ,1\n],"datatype"'
                               b':"BYTES","data":[' + json.dumps(FIRST).encode() + b"]}\r]}\t\n", "same"),
    HttpCase("raw UTF-8 value", plain(messages([SECOND])).replace(json.dumps(SECOND).encode(),
                                                                 json.dumps(SECOND, ensure_ascii=False).encode()),
             "same"),
    HttpCase("nested data list", plain(messages([[FIRST]])), "same"),
    HttpCase("numbers in parameters", plain(messages([FIRST]), parameters={"note_a": -0.0, "note_b": 1.5e300,
                                                                           "note_c": 18446744073709551615}), "same"),
    HttpCase("gzip", gzip.compress(plain(messages([FIRST]))), "same", (("Content-Encoding", "gzip"),)),
    HttpCase("binary tensor", _binary_body, "same", _binary_headers),
    HttpCase("binary tensor, JSON with trailing whitespace", _padded_body, "same", _padded_headers),
    HttpCase("binary tensor, header length with leading zeros", _zeros_body, "same", _zeros_headers),
    # Triton never decodes a path, the gateway reads it decoded: any percent-encoding in the path is refused.
    HttpCase("percent-encoded model name", plain(messages([FIRST])), "refused:malformed",
             path="/v2/models/armor%6d/infer"),
    HttpCase("percent-encoded step name", plain(messages([FIRST])), "refused:malformed",
             path=f"/v2/models/{contract.TOKENIZER.name[:-1]}%{ord(contract.TOKENIZER.name[-1]):02X}/infer"),
    HttpCase("percent-encoded slash", plain(messages([FIRST])), "refused:malformed", path="/v2/models/armorm%2Finfer"),
    HttpCase("a path past 1 KiB", plain(messages([FIRST])), "refused:too_large",
             path="/v2/models/armorm/versions/" + "1" * 1100 + "/infer"),
    HttpCase("a NUL in an input name", plain(messages([FIRST], name="messages\u0000x")), "refused:ambiguous"),
    HttpCase("Content-Encoding br", b"not brotli", "refused:malformed", (("Content-Encoding", "br"),)),
    HttpCase("invalid gzip", b"not gzip at all", "refused:malformed", (("Content-Encoding", "gzip"),)),
    HttpCase("binary tensor, header length with a sign", _binary_body, "refused:malformed",
             ((HEADER_LENGTH, "+" + _binary_headers[0][1]),)),
    # Shared memory, however spelled, needs the admin key (none is sent).
    HttpCase("shared memory, escaped key", SHM_ESCAPED, "refused:unauthenticated"),
    HttpCase("shared memory, plain key", SHM_ESCAPED.replace(b"regio\\u006e", b"region"),
             "refused:unauthenticated"),
    HttpCase("shared memory, escaped key on an output",
             plain(messages([FIRST]), outputs=[{"name": "score"}]).replace(
                 b'{"name": "score"}', b'{"name": "score", "parameters": {"\\u0073hared_memory_region": "r", '
                                       b'"shared_memory_byte_size": 4}}'), "refused:unauthenticated"),
    # Keys given twice, at each level: Python keeps the last, rapidjson finds the first.
    HttpCase("inputs twice", f'{{"inputs": [{INT64_INPUT}], "inputs": [{json.dumps(messages([FIRST]))}]}}'.encode(),
             "refused:duplicate_key"),
    HttpCase("data twice", f'{{"inputs": [{{"name": "messages", "shape": [1, 1], "datatype": "BYTES", '
                           f'"data": [{json.dumps(FIRST)}], "data": [{json.dumps(SECOND)}]}}]}}'.encode(),
             "refused:duplicate_key"),
    HttpCase("name twice, once escaped", f'{{"inputs": [{{"name": "text", "n\\u0061me": "messages", "shape": [1, 1],'
                                         f' "datatype": "BYTES", "data": [{json.dumps(FIRST)}]}}]}}'.encode(),
             "refused:duplicate_key"),
    HttpCase("parameter twice", plain(messages([FIRST]), parameters={"p": 1}).replace(b'"p": 1', b'"p": 1, "p": 2'),
             "refused:duplicate_key"),
    HttpCase("header length twice", _binary_body, "refused:duplicate_key",
             (*_binary_headers, (HEADER_LENGTH, str(len(_binary_body))))),
    HttpCase("one input named twice", plain(messages([FIRST]), messages([SECOND])), "refused:duplicate_input"),
    # Encodings the two parsers may read differently.
    HttpCase("byte order mark", b"\xef\xbb\xbf" + plain(messages([FIRST])), "refused:ambiguous"),
    HttpCase("UTF-16", plain(messages([FIRST])).decode().encode("utf-16"), "refused:ambiguous"),
    HttpCase("invalid UTF-8 in a string", plain(messages([FIRST])).replace(b"Hello", b"Hell\xff"),
             "refused:ambiguous"),
    HttpCase("encoded surrogate", plain(messages([FIRST])).replace(b"Hello", b"Hell\xed\xa0\x80"),
             "refused:ambiguous"),
    HttpCase("lone surrogate in a value", plain(messages([FIRST])).replace(b"Hello", b"Hell\\\\ud800\\ud800"),
             "refused:ambiguous"),
    HttpCase("lone surrogate in a key", plain(messages([FIRST]), parameters={"k": 1}).replace(b'"k"', b'"\\udc00"'),
             "refused:ambiguous"),
    HttpCase("NaN", plain(messages([FIRST]), parameters={"p": 1}).replace(b'"p": 1', b'"p": NaN'),
             "refused:ambiguous"),
    HttpCase("negative zero in a shape", plain(messages([FIRST])).replace(b"[1, 1]", b"[1, -0, 1]"),
             "refused:ambiguous"),
    HttpCase("integer past uint64", plain(messages([FIRST])).replace(b"[1, 1]", b"[18446744073709551617, 1]"),
             "refused:ambiguous"),
    HttpCase("float overflow", plain(messages([FIRST]), parameters={"p": 1}).replace(b'"p": 1', b'"p": 1e400'),
             "refused:ambiguous"),
    HttpCase("data and binary_data_size", _both_body, "refused:ambiguous", _both_headers),
    # The reward routes read their bodies the same way, and check sizes before Triton.
    HttpCase("get_reward, query twice", b'{"query": ["a"], "query": ["b"]}', "refused:duplicate_key",
             path="/get_reward"),
    HttpCase("get_reward, lone surrogate", b'{"query": ["\\ud800"]}', "refused:ambiguous", path="/get_reward"),
    HttpCase("get_reward, query over max_bytes", json.dumps({"query": ["x" * ((1 << 20) + 1)]}).encode(),
             "refused:too_large", path="/get_reward"),
    HttpCase("reward, response over max_bytes", json.dumps({"prompt": "Hi", "response": "x" * (1 << 20)}).encode(),
             "refused:too_large", path="/reward"),
)


# --- outcomes -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """A call's answer: its status and either the scores (by output name) or the error text."""

    status: str
    values: dict[str, np.ndarray] | None = None
    error: str = ""

    def same_as(self, other: Outcome) -> bool:
        if self.status != other.status or self.error != other.error or (self.values is None) != (other.values is None):
            return False
        return self.values is None or all(np.allclose(self.values[k], other.values[k], rtol=1e-5, atol=1e-6)
                                          for k in self.values)

    def __str__(self) -> str:
        return f"{self.status} {self.error[:160]!r}" if self.values is None else f"{self.status} (scores)"


def http_send(server, path: str, body: bytes, headers: tuple[tuple[str, str], ...]) -> Outcome:
    connection = http.client.HTTPConnection(server.host, server.http_port, timeout=120)
    try:
        connection.putrequest("POST", path, skip_accept_encoding=True)
        for name, value in (("Content-Length", str(len(body))), *headers):
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    try:
        document = json.loads(answer)
    except ValueError:
        document = {"error": answer[:200].decode("utf-8", "replace")}
    if response.status != 200:
        return Outcome(str(response.status), error=str(document.get("error", "")))
    if "rewards" in document:  # the reward routes
        return Outcome("200", {"rewards": np.asarray(document["rewards"], dtype=np.float64)})
    return Outcome("200", {o["name"]: np.asarray(o["data"], dtype=np.float64) for o in document["outputs"]})


def plain_http(case: HttpCase) -> tuple[bytes, tuple[tuple[str, str], ...]] | None:
    """The gateway's reading of the case (Python's json), written plainly; None where Python cannot read it."""
    headers = dict(case.headers)
    try:
        body = gzip.decompress(case.body) if headers.get("Content-Encoding") == "gzip" else case.body
    except OSError:
        return None
    split = int(headers[HEADER_LENGTH]) if HEADER_LENGTH in headers else len(body)
    try:
        header = json.dumps(json.loads(body[:split])).encode()
    except ValueError:
        return None
    return header + body[split:], ((HEADER_LENGTH, str(len(header))),) if HEADER_LENGTH in headers else ()


def refusals(server, protocol: str) -> dict[str, float]:
    samples = scrape(f"http://{server.host}:{server.metrics_port}/metrics").get(REFUSED, [])
    return {labels["reason"]: value for labels, value in samples if labels.get("protocol") == protocol}


def verdict(server, protocol: str, send: Callable[[], Outcome], send_plain: Callable[[], Outcome] | None) -> str:
    before = refusals(server, protocol)
    outcome = send()
    after = refusals(server, protocol)
    refused = sorted(reason for reason, count in after.items() if count > before.get(reason, 0))
    if refused:
        assert outcome.status not in ("200", "OK", "500", "StatusCode.INTERNAL") and outcome.error, outcome
        return "refused:" + ",".join(refused)
    if send_plain is None:
        return f"forwarded, and Python cannot read it: {outcome}"
    plain_outcome = send_plain()
    return "same" if outcome.same_as(plain_outcome) else f"differs: sent {outcome}; its plain reading {plain_outcome}"


@pytest.mark.parametrize("case", HTTP_CASES, ids=lambda case: case.name)
def test_http_requests_are_refused_or_run_as_the_gateway_read_them(server, case):
    path = urllib.parse.unquote(case.path)
    readable = plain_http(case) if path.endswith("/infer") else None
    send_plain = (lambda: http_send(server, path, *readable)) if readable else None
    assert verdict(server, "http", lambda: http_send(server, case.path, case.body, case.headers),
                   send_plain) == case.expected


# --- gRPC -------------------------------------------------------------------------------------------------------
def tensor(*rows: str, name: str = "messages") -> service_pb2.ModelInferRequest.InferInputTensor:
    built = service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype="BYTES", shape=[len(rows), 1])
    built.contents.bytes_contents.extend(row.encode() for row in rows)
    return built


def request(*inputs: service_pb2.ModelInferRequest.InferInputTensor, model: str = "armorm") -> bytes:
    return service_pb2.ModelInferRequest(model_name=model, inputs=inputs).SerializeToString()


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    key, length = number << 3 | 2, len(payload)
    varint = bytearray()
    while True:
        varint.append(length & 0x7F | (0x80 if length > 0x7F else 0))
        length >>= 7
        if not length:
            break
    return bytes([key]) + bytes(varint) + payload


GOOD = request(tensor(FIRST))
_head = service_pb2.ModelInferRequest.InferInputTensor(name="messages", datatype="BYTES").SerializeToString()
_shm_output = service_pb2.ModelInferRequest(outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(
    name="score", parameters={"shared_memory_region": service_pb2.InferParameter(string_param="r")})])
_raw_and_typed = service_pb2.ModelInferRequest.FromString(GOOD)
_raw_and_typed.raw_input_contents.append(struct.pack("<I", len(FIRST)) + FIRST.encode())
_int64 = service_pb2.ModelInferRequest.FromString(GOOD)
_int64.inputs[0].contents.int64_contents.append(1)
GRPC_CASES = (
    ("model named twice, the ensemble last", request(model=contract.TOKENIZER.name) + GOOD, "same"),
    ("model named twice, a step last", GOOD + request(model=contract.TOKENIZER.name), "refused:not_public"),
    ("contents in two pieces", request() + field(5, _head + field(3, b"\x02\x01") + field(5, field(8, FIRST.encode()))
                                                  + field(5, field(8, SECOND.encode()))), "same"),
    ("shape unpacked", request() + field(5, _head + b"\x18\x01\x18\x01" + field(5, field(8, FIRST.encode()))),
     "same"),
    ("two inputs with one name", GOOD + request(tensor(SECOND)), "refused:duplicate_input"),
    ("request parameter twice", GOOD + field(4, field(1, b"p") + field(2, b"\x08\x01"))
     + field(4, field(1, b"p") + field(2, b"\x08\x02")), "refused:duplicate_key"),
    ("input parameter twice", request() + field(5, tensor(FIRST).SerializeToString()
                                                + field(4, field(1, b"k") + field(2, b"\x08\x01"))
                                                + field(4, field(1, b"k") + field(2, b"\x08\x02"))),
     "refused:duplicate_key"),
    ("unknown field in the request", GOOD + b"\xa8\x06\x01", "refused:unknown_field"),
    ("unknown field in an input", request() + field(5, tensor(FIRST).SerializeToString() + b"\xa8\x06\x01"),
     "refused:unknown_field"),
    ("raw and typed contents", _raw_and_typed.SerializeToString(), "refused:ambiguous"),
    ("int64 contents in a BYTES input", _int64.SerializeToString(), "refused:malformed"),
    ("model name not UTF-8", GOOD + field(1, b"armor\xff"), "refused:malformed"),
    ("a NUL in the model name", request(tensor(FIRST), model=contract.TOKENIZER.name + "\0armorm"),
     "refused:ambiguous"),
    # A tag past 32 bits: C++ protobuf keeps its low bits (field 1, model_name), Python refuses it.
    ("a tag past 32 bits", GOOD + b"\x8a\x80\x80\x80\x10" + bytes([len(contract.TOKENIZER.name)])
     + contract.TOKENIZER.name.encode(), "refused:malformed"),
    ("shared memory on an output", GOOD + _shm_output.SerializeToString(), "refused:unauthenticated"),
)


def grpc_send(server, message: bytes) -> Outcome:
    with grpc.insecure_channel(server.grpc_url) as channel:
        try:
            answer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(message, timeout=120)
        except grpc.RpcError as err:
            return Outcome(str(err.code()), error=err.details() or "")
    response = service_pb2.ModelInferResponse.FromString(answer)
    return Outcome("OK", {o.name: np.frombuffer(raw, dtype=triton_to_np_dtype(o.datatype)).astype(np.float64)
                          for o, raw in zip(response.outputs, response.raw_output_contents)})


@pytest.mark.parametrize(("name", "message", "expected"), GRPC_CASES, ids=[case[0] for case in GRPC_CASES])
def test_grpc_requests_are_refused_or_run_as_the_gateway_read_them(server, name, message, expected):
    try:
        reading = service_pb2.ModelInferRequest.FromString(message).SerializeToString()
    except Exception:  # noqa: BLE001 - Python cannot read it: the gateway must refuse it
        reading = None
    send_plain = (lambda: grpc_send(server, reading)) if reading is not None else None
    assert verdict(server, "grpc", lambda: grpc_send(server, message), send_plain) == expected
