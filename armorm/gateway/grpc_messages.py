"""Checks of a gRPC ModelInferRequest before it reaches Triton (the HTTP twin is http_body.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from armorm.gateway.http_body import (
    DEFAULT_MAX_CONVERSATION_BYTES,
    SHARED_MEMORY_REGION,
    bytes_elements_error,
    conversation_size_error,
)


@dataclass(frozen=True)
class InferRequestView:
    """What the gateway needs of a ModelInferRequest: the model it names (None: not a ModelInferRequest at all)
    and why it must not be forwarded to the ensemble (None: it may); whether it names shared-memory regions."""

    model: str | None
    problem: str | None
    shared_memory: bool = False


def inspect_infer_request(message: bytes, max_conversation_bytes: int = DEFAULT_MAX_CONVERSATION_BYTES,
                          ) -> InferRequestView:
    """Decode a serialized ModelInferRequest and check it as a request to the ensemble.

    Only what Triton 2.51 would get wrong is checked: BYTES data given as raw contents is parsed by Triton after
    requests are batched, so one malformed request would fail its whole batch. So is a string longer than one
    conversation may be: Triton would copy it to the tokenizer only to be refused. Everything else (names,
    shapes, datatypes) Triton checks per request and answers INVALID_ARGUMENT itself.
    """
    request = service_pb2.ModelInferRequest()
    try:
        request.ParseFromString(message)
    except DecodeError as err:
        return InferRequestView(None, f"the request is not a valid ModelInferRequest ({err})")
    shared_memory = any(SHARED_MEMORY_REGION in tensor.parameters for tensor in (*request.inputs, *request.outputs))
    problem = _raw_contents_error(request, max_conversation_bytes) or _contents_error(request, max_conversation_bytes)
    return InferRequestView(request.model_name, problem, shared_memory)


def infer_request_error(message: bytes, max_conversation_bytes: int = DEFAULT_MAX_CONVERSATION_BYTES) -> str | None:
    """Why a serialized ModelInferRequest must not be forwarded to the ensemble, or None."""
    return inspect_infer_request(message, max_conversation_bytes).problem


def _contents_error(request: service_pb2.ModelInferRequest, max_conversation_bytes: int) -> str | None:
    for tensor in request.inputs:
        for count, value in enumerate(tensor.contents.bytes_contents):
            problem = conversation_size_error(count, len(value), max_conversation_bytes)
            if problem:
                return f"input {tensor.name[:64]!r}: {problem}"
    return None


def _raw_contents_error(request: service_pb2.ModelInferRequest, max_conversation_bytes: int) -> str | None:
    if not request.raw_input_contents:
        return None
    if len(request.raw_input_contents) != len(request.inputs):
        return (f"the request has {len(request.inputs)} inputs but {len(request.raw_input_contents)} "
                "raw_input_contents; give one per input")
    for tensor, raw in zip(request.inputs, request.raw_input_contents):
        if tensor.datatype == "BYTES":
            problem = bytes_elements_error(raw, math.prod(tensor.shape), max_conversation_bytes)
            if problem:
                return f"input {tensor.name[:64]!r}: {problem}"
    return None
