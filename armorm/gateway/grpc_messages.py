"""Checks of a gRPC ModelInferRequest before it reaches Triton (the HTTP twin is http_body.py).

Triton reads the message with C++ protobuf, the gateway with Python's. Conforming parsers agree on the wire format
(a singular field given twice: the last wins; a message field given twice: merged), so what is left to refuse is
what this gateway's schema could read otherwise than Triton's: a map key given twice (read here with map fields
as plain repeated entries, so every occurrence is seen), a field unknown to this schema (a newer Triton may act
on it), two inputs or outputs with one name, and an input whose data comes from two places (raw and typed
contents, or shared memory and the request).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet
from tritonclient.grpc import service_pb2

from armorm.gateway.http_body import (
    DEFAULT_MAX_CONVERSATION_BYTES,
    ENSEMBLE_DATATYPE,
    SHARED_MEMORY_REGION,
    Finding,
    bytes_elements_error,
    conversation_size_error,
    first_repeated,
)
from armorm.gateway.strict_json import Flaw


def _entries_schema() -> type[Message]:
    """ModelInferRequest with every map field read as the repeated entry messages it is on the wire."""
    pool = descriptor_pool.DescriptorPool()
    for dependency in service_pb2.DESCRIPTOR.dependencies:
        proto = descriptor_pb2.FileDescriptorProto()
        dependency.CopyToProto(proto)
        pool.Add(proto)
    proto = descriptor_pb2.FileDescriptorProto()
    service_pb2.DESCRIPTOR.CopyToProto(proto)
    pending = list(proto.message_type)
    while pending:
        message = pending.pop()
        for nested in message.nested_type:
            nested.options.ClearField("map_entry")
        pending.extend(message.nested_type)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelInferRequest"))


InferRequestEntries = _entries_schema()


@dataclass(frozen=True)
class InferRequestView:
    """What the gateway needs of a ModelInferRequest: the model it names (None: not a ModelInferRequest at all),
    what the two parsers could read differently (`ambiguity`, refused for every model), why the public ensembles
    must not get it (`problem`), and whether it names shared-memory regions."""

    model: str | None
    problem: Finding | None = None
    ambiguity: Finding | None = None
    shared_memory: bool = False


def inspect_infer_request(message: bytes, max_conversation_bytes: int = DEFAULT_MAX_CONVERSATION_BYTES,
                          ) -> InferRequestView:
    """Decode a serialized ModelInferRequest and check it.

    Of the ensemble's requests, only what Triton 2.51 would get wrong is checked: BYTES data given as raw contents
    is parsed by Triton after requests are batched, so one malformed request would fail its whole batch. So is a
    string longer than one conversation may be: Triton would copy it to the tokenizer only to be refused.
    Names and shapes Triton checks per request and answers INVALID_ARGUMENT itself.
    """
    request = InferRequestEntries()
    try:
        request.ParseFromString(message)
    except DecodeError as err:
        return InferRequestView(None, Finding(f"the request is not a valid ModelInferRequest ({err})"))
    tensors = (*request.inputs, *request.outputs)
    shared_memory = any(entry.key == SHARED_MEMORY_REGION for tensor in tensors for entry in tensor.parameters)
    ambiguity = _ambiguity(request)
    problem = None if ambiguity else (_datatype_error(request) or _raw_contents_error(request, max_conversation_bytes)
                                      or _contents_error(request, max_conversation_bytes))
    return InferRequestView(request.model_name, problem, ambiguity, shared_memory)


def infer_request_error(message: bytes, max_conversation_bytes: int = DEFAULT_MAX_CONVERSATION_BYTES) -> str | None:
    """Why a serialized ModelInferRequest must not be forwarded to the ensemble, or None."""
    view = inspect_infer_request(message, max_conversation_bytes)
    return view.ambiguity or view.problem


def _ambiguity(request: Any) -> Finding | None:
    unknown = _unknown_field(request, "the request")
    if unknown:
        return unknown
    names = [request.model_name, *(t.name for t in (*request.inputs, *request.outputs)),
             *(t.datatype for t in request.inputs)]
    if any("\0" in name for name in names):  # Triton reads a C string: the name ends there, for it only
        return Finding("a model name, tensor name or datatype holds a NUL character", Flaw.AMBIGUOUS)
    for where, entries in (("the request", request.parameters),
                           *((f"input {t.name[:64]!r}", t.parameters) for t in request.inputs),
                           *((f"output {t.name[:64]!r}", t.parameters) for t in request.outputs)):
        repeated = first_repeated([entry.key for entry in entries])
        if repeated is not None:
            return Finding(f"{where} gives the parameter {repeated[:64]!r} twice; give each parameter once",
                           Flaw.DUPLICATE_KEY)
    for kind, tensors in (("inputs", request.inputs), ("outputs", request.outputs)):
        repeated = first_repeated([tensor.name for tensor in tensors])
        if repeated is not None:
            return Finding(f"the {kind} name {repeated[:64]!r} twice; give each tensor once", Flaw.DUPLICATE_INPUT)
    for tensor in request.inputs:
        sources = [source for source, given in (
            (SHARED_MEMORY_REGION, any(entry.key == SHARED_MEMORY_REGION for entry in tensor.parameters)),
            ("contents", tensor.HasField("contents")),
            ("raw_input_contents", bool(request.raw_input_contents))) if given]
        if len(sources) > 1:
            return Finding(f"input {tensor.name[:64]!r} gives its data in {' and '.join(sources)}; give it in one "
                           "place (raw_input_contents for every input, or contents)", Flaw.AMBIGUOUS)
    return None


def _unknown_field(message: Message, where: str) -> Finding | None:
    """The first field, at any depth, that this gateway's schema does not know (Triton's may act on it)."""
    pending = [message]
    while pending:
        current = pending.pop()
        unknown = UnknownFieldSet(current)
        if len(unknown):
            return Finding(f"{where} carries protobuf field number {unknown[0].field_number} in "
                           f"{current.DESCRIPTOR.name}, which this server's schema (Triton 2.51's KServe protocol) "
                           "does not know; send only known fields", Flaw.UNKNOWN_FIELD)
        for field, value in current.ListFields():
            if field.type == FieldDescriptor.TYPE_MESSAGE:  # one message, or a repeated field's (protobuf 4 to 7)
                pending.extend([value] if isinstance(value, Message) else value)
    return None


def _datatype_error(request: Any) -> Finding | None:
    for tensor in request.inputs:
        if tensor.datatype != ENSEMBLE_DATATYPE:
            return Finding(f"input {tensor.name[:64]!r} has datatype {tensor.datatype[:32]!r}; the model's input is "
                           f"{ENSEMBLE_DATATYPE} (one string per conversation)")
        typed = [field.name for field, _ in tensor.contents.ListFields() if field.name != "bytes_contents"]
        if typed:
            return Finding(f"input {tensor.name[:64]!r} is {ENSEMBLE_DATATYPE} but carries {typed[0]}; give its "
                           "strings in bytes_contents or raw_input_contents")
    return None


def _contents_error(request: Any, max_conversation_bytes: int) -> Finding | None:
    for tensor in request.inputs:
        for count, value in enumerate(tensor.contents.bytes_contents):
            problem = conversation_size_error(count, len(value), max_conversation_bytes)
            if problem:
                return problem.within(f"input {tensor.name[:64]!r}")
    return None


def _raw_contents_error(request: Any, max_conversation_bytes: int) -> Finding | None:
    if not request.raw_input_contents:
        return None
    if len(request.raw_input_contents) != len(request.inputs):
        return Finding(f"the request has {len(request.inputs)} inputs but {len(request.raw_input_contents)} "
                       "raw_input_contents; give one per input")
    for tensor, raw in zip(request.inputs, request.raw_input_contents):
        problem = bytes_elements_error(raw, math.prod(tensor.shape), max_conversation_bytes)
        if problem:
            return problem.within(f"input {tensor.name[:64]!r}")
    return None
