"""Checks of an HTTP request body before it reaches Triton's HTTP frontend.

Triton 2.51 answers malformed KServe JSON with 500 (not 400), and its HTTP library (libevhtp) parses a
form-encoded body into two stack arrays the size of the body, so a few MB crash the whole server
(upstream issue #5840, open in every release). The gateway therefore bounds every body, checks inference
bodies here (`infer_body_error`) and forwards only what it would accept, without the client's content type.
The checks are those of a request to the public ensembles: their inputs are BYTES (one string per
conversation: `messages` JSON or templated `text`); the numeric inputs of their internal steps are no caller's
business. Every check, and the shared-memory question, is answered from one strict parse of the JSON
(strict_json.read_json), the document Triton's parser reads too; a body the two could read differently is
refused. Pure functions: the tests drive them directly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from armorm.gateway.strict_json import BodyError, Flaw, read_json
from armorm.model.conversation import InputLimits, first_repeated, json_kind

# The KServe v2 datatype of the ensemble's inputs (contract.MESSAGES and TEXT, TYPE_STRING).
ENSEMBLE_DATATYPE = "BYTES"
# Shape nesting beyond this is never a real tensor; it only exhausts the parser.
MAX_DATA_DEPTH = 64
# The KServe parameter that places a tensor in a registered shared-memory region instead of the request.
SHARED_MEMORY_REGION = "shared_memory_region"
# The tokenizer's own limit on one conversation (its max_bytes parameter), unless the launcher read another one:
# a longer string is refused here, so Triton never parses, copies and hands to the tokenizer what it would refuse.
DEFAULT_MAX_CONVERSATION_BYTES = InputLimits.max_bytes


def conversation_size_error(count: int, size: int, limit: int) -> Finding | None:
    """Why string `count` of an input, `size` bytes in UTF-8, is longer than one conversation may be, or None."""
    if size <= limit:
        return None
    return Finding(f"string {count} is {size} bytes; the limit is {limit} bytes for one conversation "
                   "(the tokenizer's max_bytes)", Flaw.TOO_LARGE)


def utf8_size(text: str, limit: int) -> int:
    """len(text.encode()), or len(text) where that is plainly within `limit`: no encoding for ASCII (isascii is
    O(1) in CPython) or for a string short enough that even 4 bytes a character fit."""
    if text.isascii() or 4 * len(text) <= limit:
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class BodyCheck:
    """Why an inference body must not be forwarded (None: it may) and its Flaw, and whether it names
    shared-memory regions (inputs read from or outputs written to one: only holders of the shared-memory API's
    key may), decided from the parsed document (see strict_json)."""

    problem: str | None
    flaw: Flaw = Flaw.MALFORMED
    shared_memory: bool = False


class Finding(str):
    """A reason to refuse a request (the message), with its Flaw: still a plain string to print and to search."""

    flaw: Flaw

    def __new__(cls, message: str, flaw: Flaw = Flaw.MALFORMED) -> Finding:
        finding = super().__new__(cls, message)
        finding.flaw = flaw
        return finding

    def within(self, where: str) -> Finding:
        """The same finding, said of `where` (an input's name)."""
        return Finding(f"{where}: {self}", self.flaw)


class _Refuse(Exception):
    def __init__(self, finding: Finding) -> None:
        super().__init__(finding)
        self.finding = finding


def bytes_elements_error(raw: bytes | memoryview, expected: int,
                         max_element_bytes: int = DEFAULT_MAX_CONVERSATION_BYTES) -> Finding | None:
    """Check BYTES tensor data in Triton's binary layout (each element: 4-byte little-endian length, then the
    bytes). Triton 2.51 parses it only once requests are batched together, so one malformed request would fail
    every request of its batch: the gateway refuses it alone instead. So is an element over max_element_bytes."""
    view = memoryview(raw)
    offset = count = 0
    while offset < len(view):
        if count == expected:
            return Finding(f"the data holds more than the {expected} strings its shape declares")
        if offset + 4 > len(view):
            return Finding(f"string {count} has a truncated 4-byte length prefix")
        length = int.from_bytes(view[offset:offset + 4], "little")
        offset += 4
        if offset + length > len(view):
            return Finding(f"string {count} declares {length} bytes but only {len(view) - offset} follow")
        problem = conversation_size_error(count, length, max_element_bytes)
        if problem:
            return problem
        offset += length
        count += 1
    if count != expected:
        return Finding(f"the data holds {count} strings; its shape declares {expected}")
    return None


def infer_body_error(body: bytes | bytearray, header_length: str | None,
                     max_conversation_bytes: int = DEFAULT_MAX_CONVERSATION_BYTES) -> str | None:
    """Why a KServe v2 inference body is malformed, or None. `header_length` is the request's
    Inference-Header-Content-Length (a JSON header followed by binary tensor data)."""
    return check_infer_body(body, header_length, max_conversation_bytes).problem


def check_infer_body(body: bytes | bytearray, header_length: str | None,
                     max_conversation_bytes: int = DEFAULT_MAX_CONVERSATION_BYTES) -> BodyCheck:
    """infer_body_error's check, its Flaw, and whether the body uses shared memory: every answer taken from the
    one parsed document (strict_json), never from the raw bytes."""
    try:
        document = _checked_document(body, header_length, max_conversation_bytes)
    except _Refuse as refusal:
        return BodyCheck(str(refusal.finding), refusal.finding.flaw)
    tensors = [*document["inputs"], *document.get("outputs", [])]
    return BodyCheck(None, shared_memory=any(SHARED_MEMORY_REGION in t.get("parameters", {}) for t in tensors))


def header_length_of(header_length: str) -> int | None:
    """Inference-Header-Content-Length as plain ASCII decimal digits (None for anything else): the gateway
    forwards str() of this number, so Triton reads the very split the check used."""
    return int(header_length) if header_length.isascii() and header_length.isdigit() else None


def _checked_document(body: bytes | bytearray, header_length: str | None, max_conversation_bytes: int,
                      ) -> dict[str, Any]:
    json_part = body
    binary_size = 0
    if header_length is not None:
        length = header_length_of(header_length)
        if length is None:
            raise _Refuse(Finding("Inference-Header-Content-Length must be a decimal integer, got "
                                  f"{header_length[:40]!r}"))
        if length > len(body):
            raise _Refuse(Finding(f"Inference-Header-Content-Length {length} does not fit the {len(body)}-byte body"))
        json_part, binary_size = body[:length], len(body) - length
    try:
        document = read_json(json_part)
    except BodyError as err:
        raise _Refuse(Finding(str(err), err.flaw)) from None
    if not isinstance(document, dict):
        raise _Refuse(Finding('the request body must be a JSON object with an "inputs" list, got a JSON '
                              f"{json_kind(document)}"))
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _Refuse(Finding('the request needs a non-empty "inputs" list'))
    _distinct_names(inputs, "inputs")
    declared_binary = 0
    binary = memoryview(body)[len(json_part):]  # a view: the tensor data is not copied
    for index, tensor in enumerate(inputs):
        size = _input_binary_size(tensor, index, max_conversation_bytes)
        if size is not None:
            problem = bytes_elements_error(binary[declared_binary:declared_binary + size],
                                           math.prod(tensor["shape"]), max_conversation_bytes)
            if problem:
                raise _Refuse(problem.within(f"input {tensor['name'][:64]!r}"))
            declared_binary += size
    if declared_binary != binary_size:
        raise _Refuse(Finding(f"the inputs declare {declared_binary} bytes of binary data but the body carries "
                              f"{binary_size}"))
    outputs = document.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                for o in outputs):
        raise _Refuse(Finding('"outputs" must be a list of objects with a string "name"'))
    _distinct_names(outputs, "outputs")
    for output in outputs:
        _parameters(output, f"output {output['name'][:64]!r}")
        if "\0" in output["name"]:
            raise _Refuse(Finding(f"output {output['name'][:64]!r}: its name holds a NUL character", Flaw.AMBIGUOUS))
    if not isinstance(document.get("parameters", {}), dict):
        raise _Refuse(Finding('"parameters" must be an object'))
    return document


def _distinct_names(tensors: list[Any], where: str) -> None:
    repeated = first_repeated([t["name"] for t in tensors if isinstance(t, dict) and isinstance(t.get("name"), str)])
    if repeated is not None:
        raise _Refuse(Finding(f'{where} names {str(repeated)[:64]!r} twice; give each tensor once',
                              Flaw.DUPLICATE_INPUT))


def _parameters(tensor: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = tensor.get("parameters", {})
    if not isinstance(parameters, dict):
        raise _Refuse(Finding(f'{where}: "parameters" must be an object'))
    return parameters


def _input_binary_size(tensor: Any, index: int, max_conversation_bytes: int) -> int | None:
    """Check one input; the bytes of binary data it takes from after the JSON (None: it takes none)."""
    where = f"inputs[{index}]"
    if not isinstance(tensor, dict):
        raise _Refuse(Finding(f"{where} must be an object, got a JSON {json_kind(tensor)}"))
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str):
        raise _Refuse(Finding(f'{where} needs a string "name"'))
    where = f"input {name[:64]!r}"
    if "\0" in name or (isinstance(datatype, str) and "\0" in datatype):  # Triton's C strings end there
        raise _Refuse(Finding(f"{where}: its name or datatype holds a NUL character", Flaw.AMBIGUOUS))
    if datatype != ENSEMBLE_DATATYPE:
        raise _Refuse(Finding(f"{where} has datatype {str(datatype)[:32]!r}; the model's input is "
                              f"{ENSEMBLE_DATATYPE} (one JSON string per conversation)"))
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _Refuse(Finding(f'{where} needs "shape" as a list of non-negative integers'))
    parameters = _parameters(tensor, where)
    sources = [source for source in (SHARED_MEMORY_REGION, "binary_data_size") if source in parameters]
    sources += ["data"] if "data" in tensor else []
    if len(sources) > 1:  # Triton would pick one; the gateway must not guess which
        raise _Refuse(Finding(f"{where} gives its data in {' and '.join(sources)}; give exactly one",
                              Flaw.AMBIGUOUS))
    if SHARED_MEMORY_REGION in parameters:
        if not isinstance(parameters[SHARED_MEMORY_REGION], str):
            raise _Refuse(Finding(f"{where}: {SHARED_MEMORY_REGION} must be a string (a registered region's name)"))
        return None  # Triton checks the region, its offset and size
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if type(size) is not int or size < 0:
            raise _Refuse(Finding(f"{where}: binary_data_size must be a non-negative integer"))
        return size
    if "data" not in tensor:
        raise _Refuse(Finding(f'{where} has no "data" (nor binary_data_size)'))
    values, problem = _flatten(tensor["data"])
    if problem:
        raise _Refuse(Finding(f"{where}: {problem}"))
    if len(values) != math.prod(shape):
        raise _Refuse(Finding(f"{where} has {len(values)} values for shape {shape} ({math.prod(shape)} expected)"))
    for count, value in enumerate(values):
        if not isinstance(value, str):
            raise _Refuse(Finding(f"{where} is {datatype} but holds the JSON {json_kind(value)} "
                                  f"{json.dumps(value)[:40]}"))
        too_large = conversation_size_error(count, utf8_size(value, max_conversation_bytes), max_conversation_bytes)
        if too_large:
            raise _Refuse(too_large.within(where))
    return None


def _flatten(data: Any) -> tuple[list[Any], str | None]:
    """Nested JSON lists → their leaves, iteratively (no recursion limit to hit)."""
    if not isinstance(data, list):
        return [data], None
    leaves: list[Any] = []
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list):
            if depth > MAX_DATA_DEPTH:
                return [], f'"data" is nested deeper than {MAX_DATA_DEPTH} levels'
            stack.extend((child, depth + 1) for child in reversed(item))
        elif isinstance(item, dict):
            return [], '"data" holds a JSON object; give values as a (nested) list of {numbers, strings, booleans}'
        else:
            leaves.append(item)
    return leaves, None
