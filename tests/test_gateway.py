"""The gateway's pure parts, without a server: which API a call belongs to, who may call it, and which bodies
and messages are refused before they reach Triton."""

import json
import struct

import pytest
from tritonclient.grpc import service_pb2

from armorm.gateway.grpc_messages import infer_request_error, inspect_infer_request
from armorm.gateway.http_body import bytes_elements_error, infer_body_error
from armorm.gateway.routes import (
    ADMIN_APIS,
    AccessPolicy,
    Api,
    api_of_grpc,
    api_of_http,
    forwarded_grpc_metadata,
    model_of_http_infer,
)


@pytest.mark.parametrize(("method", "path", "api"), [
    ("GET", "/v2/health/ready", Api.HEALTH),
    ("GET", "/v2/models/armorm/versions/1/ready", Api.HEALTH),
    ("GET", "/v2", Api.METADATA),
    ("GET", "/v2/models/armorm", Api.METADATA),
    ("GET", "/v2/models/armorm/config", Api.MODEL_CONFIG),
    ("GET", "/v2/models/stats", Api.STATISTICS),
    ("POST", "/v2/models/armorm/infer", Api.INFERENCE),
    ("POST", "/v2/models/armorm/versions/1/infer", Api.INFERENCE),
    ("POST", "/v2/repository/index", Api.MODEL_REPOSITORY),
    ("POST", "/v2/repository/models/armorm/unload", Api.MODEL_REPOSITORY),
    ("POST", "/v2/systemsharedmemory/region/r/register", Api.SHARED_MEMORY),
    ("GET", "/v2/cudasharedmemory/status", Api.SHARED_MEMORY),
    ("POST", "/v2/trace/setting", Api.TRACE),
    ("GET", "/v2/logging", Api.LOGGING),
    ("POST", "/v2/health/ready", None),
    ("GET", "/v2/models/armorm/infer", None),
    ("GET", "/v2/../v2/logging", None),
    ("GET", "//v2/logging", None),
    ("GET", "/metrics", None),
])
def test_http_paths_map_to_apis_and_unknown_ones_to_none(method, path, api):
    assert api_of_http(method, path) is api


def test_grpc_methods_map_to_apis():
    assert api_of_grpc("/inference.GRPCInferenceService/ModelInfer") is Api.INFERENCE
    assert api_of_grpc("/inference.GRPCInferenceService/RepositoryModelLoad") is Api.MODEL_REPOSITORY
    assert api_of_grpc("/inference.GRPCInferenceService/LogSettings") is Api.LOGGING
    assert api_of_grpc("/grpc.health.v1.Health/Check") is Api.HEALTH
    assert api_of_grpc("/inference.GRPCInferenceService/Nope") is None
    assert api_of_grpc("/other.Service/ModelInfer") is None


def test_access_policy_statuses():
    policy = AccessPolicy(admin_key="adm", api_key="api")
    headers = {}
    assert policy.check(Api.INFERENCE, headers.get).missing
    assert not policy.check(Api.INFERENCE, {"armorm-api-key": "nope"}.get).missing
    assert policy.check(Api.INFERENCE, {"armorm-api-key": "api"}.get) is None
    assert policy.check(Api.INFERENCE, {"triton-grpc-protocol-armorm-api-key": "api"}.get) is None
    assert policy.check(Api.HEALTH, headers.get) is None
    for api in ADMIN_APIS:
        assert policy.check(api, {"armorm-admin-key": "adm"}.get) is None
        assert policy.check(api, {"armorm-admin-key": "api"}.get) is not None, "the API key is not an admin key"
    closed = AccessPolicy()
    denial = closed.check(Api.LOGGING, {"armorm-admin-key": ""}.get)
    assert denial is not None and not denial.missing and "closed" in denial.message
    assert closed.check(Api.INFERENCE, headers.get) is None


def test_inference_is_public_for_the_ensemble_only():
    policy = AccessPolicy(admin_key="adm")
    assert policy.check_model("armorm", {}.get) is None
    for step in ("armorm_tokenizer", "armorm_backbone", "nope", "", "Armorm", "armorm "):
        message = policy.check_model(step, {}.get)
        assert message is not None and "send requests to 'armorm'" in message, step
        assert policy.check_model(step, {"armorm-admin-key": "wrong"}.get) is not None, step
        assert policy.check_model(step, {"armorm-admin-key": "adm"}.get) is None, step
        assert policy.check_model(step, {"triton-grpc-protocol-armorm-admin-key": "adm"}.get) is None, step
    assert AccessPolicy().check_model("armorm_backbone", {"armorm-admin-key": ""}.get) is not None, "no admin key"
    assert model_of_http_infer("/v2/models/armorm_backbone/infer") == "armorm_backbone"
    assert model_of_http_infer("/v2/models/armorm/versions/1/infer") == "armorm"
    assert model_of_http_infer("/v2/models/armorm/ready") == ""


def test_grpc_requests_name_their_model():
    view = inspect_infer_request(service_pb2.ModelInferRequest(model_name="armorm_backbone").SerializeToString())
    assert (view.model, view.problem) == ("armorm_backbone", None)
    garbage = inspect_infer_request(b"\xff\xff garbage")
    assert garbage.model is None and "not a valid ModelInferRequest" in garbage.problem


def test_gateway_metrics_are_exposed_with_their_values():
    from prometheus_client.parser import text_string_to_metric_families

    from armorm.gateway.stats import (
        ABANDONED,
        BUFFERED_BYTES,
        BUFFERED_BYTES_LIMIT,
        CONNECTIONS,
        IN_FLIGHT,
        REFUSED,
        REQUESTS,
        SHED,
        UPSTREAM_UNAVAILABLE,
        GatewayStats,
    )

    stats, other = GatewayStats(), GatewayStats()
    stats.requests[("grpc", "inference")] += 3
    stats.refused[("http", "not_public")] += 2
    stats.abandoned, stats.in_flight, stats.upstream_unavailable = 4, 5, 6
    stats.buffered_bytes, stats.buffered_bytes_limit = 7, 8
    stats.connections["http"] += 9
    stats.shed[("http", "header_timeout")] += 10
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(stats.prometheus()) for s in family.samples}
    assert samples == {
        (REQUESTS, (("api", "inference"), ("protocol", "grpc"))): 3,
        (REFUSED, (("protocol", "http"), ("reason", "not_public"))): 2,
        (ABANDONED, ()): 4, (IN_FLIGHT, ()): 5, (UPSTREAM_UNAVAILABLE, ()): 6,
        (BUFFERED_BYTES, ()): 7, (BUFFERED_BYTES_LIMIT, ()): 8, (CONNECTIONS, (("listener", "http"),)): 9,
        (SHED, (("listener", "http"), ("reason", "header_timeout"))): 10,
    }
    assert f"# TYPE {IN_FLIGHT} gauge" in stats.prometheus() and f"# TYPE {REQUESTS} counter" in stats.prometheus()
    assert f"{IN_FLIGHT} 0.0" in other.prometheus(), "each gateway has a registry of its own"


def test_keys_are_not_forwarded_to_triton():
    metadata = (("armorm-api-key", "k"), ("triton-grpc-protocol-armorm-admin-key", "a"), ("traceparent", "t"),
                ("grpc-timeout", "1S"), ("user-agent", "x"))
    assert forwarded_grpc_metadata(metadata) == (("traceparent", "t"),)


def strings(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def test_bytes_elements_are_walked_exactly():
    assert bytes_elements_error(strings(b"ab", b""), 2) is None
    assert "declares 2147483647 bytes" in bytes_elements_error(b"\xff\xff\xff\x7f", 1)
    assert "truncated" in bytes_elements_error(b"\x01\x00", 1)
    assert "more than the 1" in bytes_elements_error(strings(b"a", b"b"), 1)
    assert "holds 1 strings; its shape declares 2" in bytes_elements_error(strings(b"a"), 2)


def body(inputs, **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


MESSAGES = {"name": "messages", "shape": [1, 1], "datatype": "BYTES"}


@pytest.mark.parametrize(("raw", "header", "fragment"), [
    (b"[1]", None, "must be a JSON object"),
    (b'{"inputs": [', None, "not valid JSON"),
    (b"[" * 100000, None, "nested too deeply"),
    (b"\xff{}", None, "not valid UTF-8"),
    (body([]), None, "non-empty"),
    (body([{**MESSAGES, "data": [5]}]), None, "is BYTES but holds the JSON number 5"),
    (body([{**MESSAGES, "data": [{"a": 1}]}]), None, "holds a JSON object"),
    (body([{**MESSAGES, "data": ["a", "b"]}]), None, "2 values for shape [1, 1]"),
    (body([{**MESSAGES, "datatype": "FP128", "data": [1]}]), None, "datatype"),
    (body([{**MESSAGES, "shape": [1, -1], "data": ["a"]}]), None, "non-negative"),
    (body([{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}]), None, "the model's input is BYTES"),
    (body([{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.5]}]), None, "the model's input is BYTES"),
    (body([{**MESSAGES, "data": [None]}]), None, "holds the JSON null"),
    (body([{**MESSAGES, "data": ["a"]}], outputs=[{"nom": "score"}]), None, '"outputs"'),
    (b"{}", "99", "does not fit"),
    (b"{}", "x", "must be a decimal integer"),
])
def test_malformed_inference_bodies_are_named(raw, header, fragment):
    assert fragment in infer_body_error(raw, header)


def test_valid_inference_bodies_pass():
    assert infer_body_error(body([{**MESSAGES, "data": ["[]"]}]), None) is None
    assert infer_body_error(body([{**MESSAGES, "data": [["[]"]]}], outputs=[{"name": "score"}]), None) is None
    assert infer_body_error(body([{**MESSAGES, "name": "text", "shape": [2, 1], "data": ["a", "b"]}]), None) is None
    data = strings(b"[]")
    header = body([{**MESSAGES, "parameters": {"binary_data_size": len(data)}}])
    assert infer_body_error(header + data, str(len(header))) is None
    assert "declares 9 bytes" in infer_body_error(header + b"\x09\x00\x00\x00[]", str(len(header)))
    assert "binary data" in infer_body_error(header + data + b"!", str(len(header)))


def test_grpc_infer_requests_with_bad_bytes_are_refused():
    request = service_pb2.ModelInferRequest(model_name="armorm")
    tensor = request.inputs.add(name="messages", datatype="BYTES")
    tensor.shape.extend([2, 1])
    request.raw_input_contents.append(strings(b"[]", b"[]"))
    assert infer_request_error(request.SerializeToString()) is None
    request.raw_input_contents[0] = strings(b"[]")
    assert "holds 1 strings; its shape declares 2" in infer_request_error(request.SerializeToString())
    assert "not a valid ModelInferRequest" in infer_request_error(b"\xff\xff garbage")
    typed = service_pb2.ModelInferRequest(model_name="armorm")
    typed.inputs.add(name="messages", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(b"[]")
    assert infer_request_error(typed.SerializeToString()) is None, "typed contents: Triton checks those itself"


def test_binary_bytes_of_size_zero_are_still_checked_and_header_lengths_are_plain_digits():
    header = body([{**MESSAGES, "shape": [2, 1], "parameters": {"binary_data_size": 0}}])
    assert "holds 0 strings; its shape declares 2" in infer_body_error(header, str(len(header)))
    for odd in (" 12", "1_2", "١٢", "-1"):
        assert "decimal integer" in infer_body_error(b"{}", odd)


def test_paths_with_dot_or_empty_segments_are_not_forwarded():
    from armorm.gateway.http_listener import plain_path

    assert plain_path("/v2/models/armorm/infer")
    for path in ("/v2/models/../repository/index", "/v2/./logging", "//v2/logging", "/v2/models/x/", "/v2/models/.."):
        assert not plain_path(path), path


def test_a_key_header_that_is_not_utf8_is_a_wrong_key():
    policy = AccessPolicy(admin_key="adm")
    denial = policy.check(Api.LOGGING, {"armorm-admin-key": b"\xff".decode("utf-8", "surrogateescape")}.get)
    assert denial is not None and not denial.missing


def test_triton_transient_states_are_recognised_for_unavailable():
    from armorm.gateway.routes import transient_failure

    assert transient_failure("Stub process 'armorm_backbone_0_0' is not healthy.")
    assert transient_failure("Request for unknown model: 'armorm' has no available versions")
    assert not transient_failure("messages is not valid JSON")


def test_a_conversation_over_the_tokenizers_byte_limit_is_refused_in_every_encoding():
    """JSON data, binary data and gRPC's typed and raw contents: Triton never gets a string it would refuse."""
    limit = 100
    fits, over, wide, wider = "x" * limit, "x" * (limit + 1), "é" * 51, "é" * 101  # é: 2 bytes in UTF-8
    for text, problem in ((fits, None), (over, "string 1 is 101 bytes; the limit is 100"), (wide, "is 102 bytes"),
                          (wider, "is 202 bytes")):
        json_body = body([{**MESSAGES, "shape": [2, 1], "data": ["[]", text]}])
        got = infer_body_error(json_body, None, limit)
        assert got is None if problem is None else problem in got, (text[:3], got)
        data = strings(b"[]", text.encode())
        header = body([{**MESSAGES, "shape": [2, 1], "parameters": {"binary_data_size": len(data)}}])
        got = infer_body_error(header + data, str(len(header)), limit)
        assert got is None if problem is None else problem in got, (text[:3], got)
        for raw in (False, True):
            request = service_pb2.ModelInferRequest(model_name="armorm")
            tensor = request.inputs.add(name="messages", datatype="BYTES", shape=[2, 1])
            if raw:
                request.raw_input_contents.append(data)
            else:
                tensor.contents.bytes_contents.extend([b"[]", text.encode()])
            got = infer_request_error(request.SerializeToString(), limit)
            assert got is None if problem is None else problem in got, (text[:3], raw, got)
    assert infer_body_error(body([{**MESSAGES, "data": ["x" * (1 << 20)]}]), None) is None  # the default: 1 MiB
    assert "the limit is 1048576" in infer_body_error(body([{**MESSAGES, "data": ["x" * ((1 << 20) + 1)]}]), None)


@pytest.mark.parametrize(("raw", "flaw", "fragment"), [
    (b'{"a": 1, "a": 2}', "duplicate_key", "'a' appears twice"),
    (b'{"a": [{"b": 1, "\\u0062": 2}]}', "duplicate_key", "'b' appears twice"),  # unescaped before compared
    (b'\xef\xbb\xbf{}', "ambiguous", "byte order mark"),
    ('{"a": 1}'.encode("utf-16-le"), "malformed", "not valid JSON"),  # no UTF-16 detection
    (b'{"a": "\xff"}', "ambiguous", "not valid UTF-8"),
    (b'{"a": "\xed\xa0\x80"}', "ambiguous", "not valid UTF-8"),  # an encoded surrogate
    (b'{"a": "\\ud800"}', "ambiguous", "lone surrogate (\\ud800)"),
    (b'{"\\udc00": 1}', "ambiguous", "lone surrogate (\\udc00)"),
    (b'{"a": NaN}', "ambiguous", "NaN is not JSON"),
    (b'{"a": -Infinity}', "ambiguous", "-Infinity is not JSON"),
    (b'{"a": -0}', "ambiguous", "negative zero"),
    (b'{"a": 18446744073709551616}', "ambiguous", "out of"),
    (b'{"a": -9223372036854775809}', "ambiguous", "out of"),
    (b'{"a": 1' + b"0" * 5000 + b"}", "ambiguous", "out of range"),
    (b'{"a": 1e309}', "ambiguous", "overflows a double"),
])
def test_json_that_two_parsers_could_read_differently_is_refused(raw, flaw, fragment):
    from armorm.gateway.strict_json import BodyError, read_json

    with pytest.raises(BodyError) as refused:
        read_json(raw)
    assert refused.value.flaw.value == flaw and fragment in str(refused.value), str(refused.value)


def test_json_that_every_parser_reads_alike_is_read():
    from armorm.gateway.strict_json import read_json

    assert read_json(b'{"a": "\\ud83e\\udd9a", "b": "\\\\ud800", "c": -0.0, "d": [18446744073709551615, '
                     b'-9223372036854775808], "e": 1e308}') == {
        "a": "🦚", "b": "\\ud800", "c": -0.0, "d": [18446744073709551615, -9223372036854775808], "e": 1e308}
    assert read_json('{"k": "é", "\\u0073": 1}'.encode()) == {"k": "é", "s": 1}


def test_every_refusal_names_its_cause():
    from armorm.gateway.http_body import check_infer_body

    over = check_infer_body(body([{**MESSAGES, "data": ["x" * 101]}]), None, 100)
    assert over.flaw.value == "too_large" and "101 bytes" in over.problem
    assert check_infer_body(body([{**MESSAGES, "data": [1]}]), None).flaw.value == "malformed"
    shared = body([{**MESSAGES, "parameters": {"shared_memory_region": "r"}}]).replace(b"region", b"regio\\u006e")
    assert check_infer_body(shared, None).shared_memory, "an escaped key is the same key"
    request = service_pb2.ModelInferRequest(model_name="armorm")
    request.inputs.add(name="messages", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(b"x" * 101)
    view = inspect_infer_request(request.SerializeToString(), 100)
    assert view.problem.flaw.value == "too_large" and view.ambiguity is None
    twice = request.SerializeToString() + service_pb2.ModelInferRequest(parameters={
        "p": service_pb2.InferParameter(bool_param=True)}).SerializeToString() * 2
    assert inspect_infer_request(twice).ambiguity.flaw.value == "duplicate_key"
