"""Checks of an HTTP request body before it reaches Triton's HTTP frontend.

Triton 2.51 answers malformed KServe JSON with 500 (not 400), and its HTTP library (libevhtp) parses a
form-encoded body into two stack arrays the size of the body, so a few MB crash the whole server
(upstream issue #5840, open in every release). The gateway therefore bounds every body, checks inference
bodies here (`infer_body_error`) and forwards only what it would accept, without the client's content type.
The checks are those of a request to the ensemble, the one public model: its inputs are BYTES (one string per
conversation: `messages` JSON or templated `text`); the numeric inputs of its internal steps are no caller's
business.
Pure functions: the tests drive them directly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from armorm.model.conversation import InputLimits, json_kind

# The KServe v2 datatype of the ensemble's inputs (contract.MESSAGES and TEXT, TYPE_STRING).
ENSEMBLE_DATATYPE = "BYTES"
# Shape nesting beyond this is never a real tensor; it only exhausts the parser.
MAX_DATA_DEPTH = 64
# The KServe parameter that places a tensor in a registered shared-memory region instead of the request.
SHARED_MEMORY_REGION = "shared_memory_region"
# The tokenizer's own limit on one conversation (its max_bytes parameter), unless the launcher read another one:
# a longer string is refused here, so Triton never parses, copies and hands to the tokenizer what it would refuse.
DEFAULT_MAX_CONVERSATION_BYTES = InputLimits.max_bytes


def conversation_size_error(count: int, size: int, limit: int) -> str | None:
    """Why string `count` of an input, `size` bytes in UTF-8, is longer than one conversation may be, or None."""
    if size <= limit:
        return None
    return (f"string {count} is {size} bytes; the limit is {limit} bytes for one conversation "
            "(the tokenizer's max_bytes)")


def utf8_size(text: str, limit: int) -> int:
    """len(text.encode()), or len(text) where that is plainly within `limit`: no encoding for ASCII (isascii is
    O(1) in CPython) or for a string short enough that even 4 bytes a character fit."""
    if text.isascii() or 4 * len(text) <= limit:
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class BodyCheck:
    """Why an inference body must not be forwarded (None: it may), and whether it names shared-memory regions
    (inputs read from or outputs written to one: only holders of the shared-memory API's key may)."""

    problem: str | None
    shared_memory: bool = False


class BodyError(ValueError):
    """The body cannot be forwarded; `status` is the HTTP status to answer with (400 or 413)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def bytes_elements_error(raw: bytes | memoryview, expected: int,
                         max_element_bytes: int = DEFAULT_MAX_CONVERSATION_BYTES) -> str | None:
    """Check BYTES tensor data in Triton's binary layout (each element: 4-byte little-endian length, then the
    bytes). Triton 2.51 parses it only once requests are batched together, so one malformed request would fail
    every request of its batch: the gateway refuses it alone instead. So is an element over max_element_bytes."""
    view = memoryview(raw)
    offset = count = 0
    while offset < len(view):
        if count == expected:
            return f"the data holds more than the {expected} strings its shape declares"
        if offset + 4 > len(view):
            return f"string {count} has a truncated 4-byte length prefix"
        length = int.from_bytes(view[offset:offset + 4], "little")
        offset += 4
        if offset + length > len(view):
            return f"string {count} declares {length} bytes but only {len(view) - offset} follow"
        problem = conversation_size_error(count, length, max_element_bytes)
        if problem:
            return problem
        offset += length
        count += 1
    if count != expected:
        return f"the data holds {count} strings; its shape declares {expected}"
    return None


def infer_body_error(body: bytes | bytearray, header_length: str | None,
                     max_conversation_bytes: int = DEFAULT_MAX_CONVERSATION_BYTES) -> str | None:
    """Why a KServe v2 inference body is malformed, or None. `header_length` is the request's
    Inference-Header-Content-Length (a JSON header followed by binary tensor data)."""
    return check_infer_body(body, header_length, max_conversation_bytes).problem


def check_infer_body(body: bytes | bytearray, header_length: str | None,
                     max_conversation_bytes: int = DEFAULT_MAX_CONVERSATION_BYTES) -> BodyCheck:
    """infer_body_error's check, and whether the body uses shared memory."""
    problem = _infer_body_problem(body, header_length, max_conversation_bytes)
    if problem is not None:
        return BodyCheck(problem)
    json_end = int(header_length) if header_length is not None else len(body)
    if body.find(SHARED_MEMORY_REGION.encode(), 0, json_end) < 0:  # a byte search: no second parse
        return BodyCheck(None)
    document = json.loads(body[:int(header_length)] if header_length is not None else body)
    tensors = [*document["inputs"], *document.get("outputs", [])]
    return BodyCheck(None, any(SHARED_MEMORY_REGION in (t.get("parameters") or {}) for t in tensors))


def _infer_body_problem(body: bytes | bytearray, header_length: str | None, max_conversation_bytes: int,
                        ) -> str | None:
    json_part = body
    binary_size = 0
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()):
            return f"Inference-Header-Content-Length must be a decimal integer, got {header_length[:40]!r}"
        length = int(header_length)
        if not 0 <= length <= len(body):
            return f"Inference-Header-Content-Length {length} does not fit the {len(body)}-byte body"
        json_part, binary_size = body[:length], len(body) - length
    try:
        document = json.loads(json_part)
    except RecursionError:
        return "the request JSON is nested too deeply"
    except UnicodeDecodeError:
        return "the request JSON is not valid UTF-8"
    except ValueError as err:
        return f"the request body is not valid JSON ({err})"
    if not isinstance(document, dict):
        return f'the request body must be a JSON object with an "inputs" list, got a JSON {json_kind(document)}'
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        return 'the request needs a non-empty "inputs" list'
    declared_binary = 0
    binary = memoryview(body)[len(json_part):]  # a view: the tensor data is not copied
    for index, tensor in enumerate(inputs):
        problem, size = _input_error(tensor, index, max_conversation_bytes)
        if problem:
            return problem
        if "binary_data_size" in tensor.get("parameters", {}):
            problem = bytes_elements_error(binary[declared_binary:declared_binary + size], math.prod(tensor["shape"]),
                                           max_conversation_bytes)
            if problem:
                return f"input {tensor['name'][:64]!r}: {problem}"
        declared_binary += size
    if declared_binary != binary_size:
        return f"the inputs declare {declared_binary} bytes of binary data but the body carries {binary_size}"
    outputs = document.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                for o in outputs):
        return '"outputs" must be a list of objects with a string "name"'
    if not isinstance(document.get("parameters", {}), dict):
        return '"parameters" must be an object'
    return None


def _input_error(tensor: Any, index: int, max_conversation_bytes: int) -> tuple[str | None, int]:
    where = f"inputs[{index}]"
    if not isinstance(tensor, dict):
        return f"{where} must be an object, got a JSON {json_kind(tensor)}", 0
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str):
        return f'{where} needs a string "name"', 0
    where = f"input {name[:64]!r}"
    if datatype != ENSEMBLE_DATATYPE:
        return (f"{where} has datatype {str(datatype)[:32]!r}; the model's input is {ENSEMBLE_DATATYPE} (one JSON "
                "string per conversation)"), 0
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        return f'{where} needs "shape" as a list of non-negative integers', 0
    parameters = tensor.get("parameters", {})
    if not isinstance(parameters, dict):
        return f'{where}: "parameters" must be an object', 0
    if SHARED_MEMORY_REGION in parameters:
        if not isinstance(parameters[SHARED_MEMORY_REGION], str):
            return f"{where}: {SHARED_MEMORY_REGION} must be a string (a registered region's name)", 0
        return None, 0  # Triton checks the region, its offset and size
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if type(size) is not int or size < 0:
            return f"{where}: binary_data_size must be a non-negative integer", 0
        return None, size
    if "data" not in tensor:
        return f'{where} has no "data" (nor binary_data_size)', 0
    values, problem = _flatten(tensor["data"])
    if problem:
        return f"{where}: {problem}", 0
    if len(values) != math.prod(shape):
        return f"{where} has {len(values)} values for shape {shape} ({math.prod(shape)} expected)", 0
    for count, value in enumerate(values):
        if not isinstance(value, str):
            return f"{where} is {datatype} but holds the JSON {json_kind(value)} {json.dumps(value)[:40]}", 0
        problem = conversation_size_error(count, utf8_size(value, max_conversation_bytes), max_conversation_bytes)
        if problem:
            return f"{where}: {problem}", 0
    return None, 0


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
