"""What every served `model.py` shares: parameters, device choice, per-request errors, and running a
row-wise function once over a whole dynamic batch.

`pb` is the `triton_python_backend_utils` module, passed in: it exists only inside the Triton stub
(tests pass a typed fake), and importing it here would tie this package to the stub.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from armorm.codec import batch_sizes, split_rows


@dataclass(frozen=True)
class ModelContext:
    name: str
    version_dir: Path
    parameters: dict[str, str]
    instance_kind: str  # "CPU", "GPU" or "MODEL"
    device_id: int

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> ModelContext:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        return cls(
            name=config["name"],
            version_dir=Path(args["model_repository"]) / args["model_version"],
            parameters=parameters,
            instance_kind=args.get("model_instance_kind", "CPU"),
            device_id=int(args.get("model_instance_device_id", 0)),
        )

    def parameter(self, key: str, default: str) -> str:
        return self.parameters.get(key, default)

    def int_parameter(self, key: str, default: int) -> int:
        value = self.parameter(key, str(default))
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{self.name}: parameter {key}={value!r} must be an integer") from None

    def bool_parameter(self, key: str, default: bool) -> bool:
        value = self.parameter(key, str(default).lower()).strip().lower()
        if value not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{self.name}: parameter {key}={value!r} must be true or false")
        return value in ("true", "1", "yes")

    def set_torch_threads(self, default: int) -> int:
        """Apply the `threads` parameter to torch; 0 keeps torch's own choice. Returns the count in use."""
        import torch

        threads = self.int_parameter("threads", default)
        if threads > 0:
            torch.set_num_threads(threads)
        return torch.get_num_threads()

    def torch_device(self) -> str:
        """The instance's GPU when Triton placed it on one (KIND_GPU); KIND_MODEL lets the model choose:
        the first GPU where there is one; otherwise the CPU."""
        if self.instance_kind == "GPU":
            return f"cuda:{self.device_id}"
        if self.instance_kind == "MODEL":
            import torch

            return "cuda:0" if torch.cuda.is_available() else "cpu"
        return "cpu"


class RequestError(ValueError):
    """One request's input is unusable; only that request fails, with INVALID_ARGUMENT."""


def invalid_argument(pb: Any, message: str) -> Any:
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message, pb.TritonError.INVALID_ARG))


def internal_error(pb: Any, message: str) -> Any:
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message, pb.TritonError.INTERNAL))


def unavailable(pb: Any, message: str) -> Any:
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message, pb.TritonError.UNAVAILABLE))


def answer_each(
    pb: Any,
    requests: Sequence[Any],
    respond: Callable[[Sequence[Any]], list[Any]],
    on_failure: Callable[[Any, Exception], Any],
) -> list[Any]:
    """The one place every `model.py` answers through: one response per request, whatever raises.

    `respond` handles the whole dynamic batch at once. If it raises (a library choking on one request's
    content, out of memory, ...), each request is retried alone, so only a request that also fails by
    itself gets `on_failure(pb, err)`; its batch neighbours are answered as usual and the model keeps serving.
    """
    try:
        return respond(requests)
    except Exception as err:  # noqa: BLE001 - isolate the culprit below, never fail the neighbours
        if len(requests) == 1:
            pb.Logger.log_error(f"request failed: {err!r}")
            return [on_failure(pb, err)]
        pb.Logger.log_warn(f"batch of {len(requests)} failed ({err!r}); answering each request alone")
    responses = []
    for request in requests:
        try:
            responses.extend(respond([request]))
        except Exception as err:  # noqa: BLE001 - this request's own failure
            pb.Logger.log_error(f"request failed: {err!r}")
            responses.append(on_failure(pb, err))
    return responses


def failed_internally(pb: Any, err: Exception) -> Any:
    """For steps after validation: the request was well formed, so the fault is the server's."""
    return internal_error(pb, f"the model failed on this request ({type(err).__name__}); see the server log")


def tensors_response(pb: Any, outputs: Mapping[str, np.ndarray]) -> Any:
    return pb.InferenceResponse(output_tensors=[pb.Tensor(name, np.ascontiguousarray(value))
                                                for name, value in outputs.items()])


def input_array(pb: Any, request: Any, name: str) -> np.ndarray:
    tensor = pb.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise RequestError(f"input {name!r} is missing")
    return tensor.as_numpy()


def check_rows(array: np.ndarray, name: str, width: int) -> np.ndarray:
    if array.ndim != 2 or array.shape[1] != width:
        raise RequestError(f"input {name!r} must have shape [batch, {width}], got {list(array.shape)}")
    return array


def run_rowwise(
    pb: Any,
    requests: Sequence[Any],
    widths: Mapping[str, int],
    compute: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
) -> list[Any]:
    """Validate each request's [batch, width] inputs, run `compute` once on all valid rows, split back.

    A request with a bad input gets its own INVALID_ARGUMENT; its neighbours are computed as usual.
    A failing `compute` raises: `answer_each` then isolates the request that caused it.
    """
    responses: list[Any] = [None] * len(requests)
    valid: list[int] = []
    gathered: dict[str, list[np.ndarray]] = {name: [] for name in widths}
    for index, request in enumerate(requests):
        try:
            arrays = {name: check_rows(input_array(pb, request, name), name, width) for name, width in widths.items()}
            if len(set(batch_sizes(list(arrays.values())))) != 1:
                raise RequestError(f"inputs {', '.join(widths)} must have the same batch size")
        except RequestError as err:
            responses[index] = invalid_argument(pb, str(err))
            continue
        valid.append(index)
        for name, array in arrays.items():
            gathered[name].append(array)
    if valid:
        sizes = batch_sizes(gathered[next(iter(widths))])
        outputs = compute({name: np.concatenate(arrays) for name, arrays in gathered.items()})
        per_output = {name: split_rows(value, sizes) for name, value in outputs.items()}
        for slot, index in enumerate(valid):
            responses[index] = tensors_response(pb, {name: parts[slot] for name, parts in per_output.items()})
    return responses
