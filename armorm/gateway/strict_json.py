"""One reading of a JSON body: the gateway's checks and Triton's rapidjson must see the same document.

Python's `json` and rapidjson agree on plain UTF-8 JSON with distinct keys. Where they may not, the body is
refused rather than guessed at: a repeated key at any depth (Python keeps the last, rapidjson's lookups find the
first), a byte order mark or another encoding than UTF-8 (Python detects UTF-16/32 and skips a BOM), invalid
UTF-8, an escaped lone surrogate (Python keeps it, rapidjson refuses it), NaN/Infinity, integers outside
int64/uint64 or written `-0` (rapidjson turns those into doubles) and floats that overflow. Keys are compared after
unescaping, so `"shared_memory_regio\\u006e"` is `shared_memory_region` to every check. Floats are passed on as
written: the gateway acts on none, so a last-digit rounding difference between the two parsers changes no check.
"""

from __future__ import annotations

import enum
import json
import re
from typing import Any

from armorm.model.conversation import first_repeated

INT_MIN, UINT_MAX = -(1 << 63), (1 << 64) - 1  # rapidjson's integer range; beyond it a number becomes a double
_BOM = b"\xef\xbb\xbf"
# Only an escape can put a surrogate into a string of strictly decoded UTF-8: this finds every candidate
# (and some false ones, such as an escaped backslash before "ud8..", which the exact walk then clears).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class Flaw(enum.Enum):
    """Why a request's content is refused; the value is the `reason` label of armorm_gateway_refused_total."""

    MALFORMED = "malformed"  # not a request the model can run (wrong type, shape, missing field)
    TOO_LARGE = "too_large"  # a body over its limit, or a conversation over the tokenizer's max_bytes
    DUPLICATE_KEY = "duplicate_key"  # a JSON key, a protobuf map key or a header given twice
    DUPLICATE_INPUT = "duplicate_input"  # two input tensors with one name
    AMBIGUOUS = "ambiguous"  # an encoding two parsers may read differently (BOM, bad UTF-8, -0, data given twice)
    UNKNOWN_FIELD = "unknown_field"  # a protobuf field this gateway's schema lacks (Triton's may know it)


class BodyError(ValueError):
    """The body cannot be forwarded: `status` is the HTTP status to answer with (400 or 413), `flaw` the cause."""

    def __init__(self, message: str, status: int = 400, flaw: Flaw = Flaw.MALFORMED) -> None:
        super().__init__(message)
        self.status, self.flaw = status, flaw


class _Refused(ValueError):
    def __init__(self, message: str, flaw: Flaw) -> None:
        super().__init__(message)
        self.flaw = flaw


def read_json(raw: bytes | bytearray, what: str = "the request body", example: str = "") -> Any:
    """The document in `raw`, read as rapidjson reads it, or BodyError (with its Flaw) where the two could differ.
    `example` shows a caller whose body is no JSON at all what it must look like."""
    if raw[:3] == _BOM:
        raise BodyError(f"{what} starts with a UTF-8 byte order mark; send JSON without one", flaw=Flaw.AMBIGUOUS)
    try:
        text = raw.decode("utf-8")  # strict: no UTF-16/32 detection, no encoded surrogates
    except UnicodeDecodeError as err:
        raise BodyError(f"{what} is not valid UTF-8 (byte {err.start}); send UTF-8 JSON",
                        flaw=Flaw.AMBIGUOUS) from None
    try:
        document = json.loads(text, object_pairs_hook=_distinct_keys, parse_int=_int, parse_float=_float,
                              parse_constant=_constant)
    except _Refused as err:
        raise BodyError(f"{what}: {err}", flaw=err.flaw) from None
    except RecursionError:
        raise BodyError(f"{what} is nested too deeply") from None
    except ValueError as err:
        hint = f"; it must be JSON like {example}" if example else ""
        raise BodyError(f"{what} is not valid JSON ({err}){hint}") from None
    if _SURROGATE_ESCAPE.search(text):
        _refuse_lone_surrogates(document, what)
    return document


def _distinct_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    repeated = first_repeated(key for key, _ in pairs)
    if repeated is not None:
        raise _Refused(f"the key {repeated[:64]!r} appears twice in one object; give each key once",
                       Flaw.DUPLICATE_KEY)
    return dict(pairs)


def _int(text: str) -> int:
    if len(text) > 20 or (text[0] == "-" and text.strip("-0") == ""):
        raise _Refused(f"the integer {text[:24]} is out of range or negative zero; integers must lie within "
                       "int64/uint64", Flaw.AMBIGUOUS)
    value = int(text)
    if not INT_MIN <= value <= UINT_MAX:
        raise _Refused(f"the integer {text} is out of the int64/uint64 range", Flaw.AMBIGUOUS)
    return value


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Refused(f"the number {text[:24]} overflows a double", Flaw.AMBIGUOUS)
    return value


def _constant(text: str) -> float:
    raise _Refused(f"{text} is not JSON; send numbers only", Flaw.AMBIGUOUS)


def _refuse_lone_surrogates(document: Any, what: str) -> None:
    """Walk every key and string (iteratively: no recursion limit); a lone surrogate cannot encode to UTF-8."""
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as err:
                raise BodyError(f"{what} escapes a lone surrogate (\\u{ord(item[err.start]):04x}) in a string; "
                                "write characters outside the BMP as a surrogate pair or as UTF-8",
                                flaw=Flaw.AMBIGUOUS) from None
