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

from armorm.runtimes.parameters import Parameters
from armorm.serving.codec import batch_sizes, split_rows
from armorm_client.contract import GATE_HIDDEN, GATE_POSITION, INPUT_IDS, REWARD_HIDDEN, REWARD_POSITION


@dataclass(frozen=True)
class ModelContext:
    name: str
    version_dir: Path
    parameters: dict[str, str]
    instance_kind: str  # "CPU", "GPU" or "MODEL"
    device_id: int
    outputs: tuple[str, ...] = ()  # the model's output names, as its config declares them

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
            outputs=tuple(output["name"] for output in config.get("output", [])),
        )

    @property
    def params(self) -> Parameters:
        return Parameters(self.name, self.parameters)

    def parameter(self, key: str, default: str) -> str:
        return self.params.get(key, default)

    def int_parameter(self, key: str, default: int) -> int:
        return self.params.integer(key, default)

    def bool_parameter(self, key: str, default: bool) -> bool:
        return self.params.boolean(key, default)

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


def answer_each(
    pb: Any,
    requests: Sequence[Any],
    respond: Callable[[Sequence[Any]], list[Any]],
    on_failure: Callable[[Any, Exception], Any],
) -> list[Any]:
    """The one place every `model.py` answers through: one response per request, whatever raises.

    `respond` handles the whole dynamic batch at once. If it raises (a library choking on one request's
    content, out of memory, ...), the batch is halved and each half answered the same way, so a single culprit
    costs at most 2·log₂(n) extra calls (not n) and only a request that also fails alone gets `on_failure(pb, err)`;
    its neighbours are answered as usual and the model keeps serving. Halving also lets an out-of-memory batch
    through in smaller pieces.
    """
    try:
        return respond(requests)
    except Exception as err:  # noqa: BLE001 - isolate the culprit below, never fail the neighbours
        if len(requests) == 1:
            pb.Logger.log_error(f"request failed: {err!r}")
            return [on_failure(pb, err)]
        pb.Logger.log_warn(f"batch of {len(requests)} failed ({err!r}); halving it to isolate the cause")
    half = len(requests) // 2
    return (answer_each(pb, requests[:half], respond, on_failure)
            + answer_each(pb, requests[half:], respond, on_failure))


def unavailable(pb: Any, message: str) -> Any:
    """Retryable: the client's retry policy takes UNAVAILABLE (the server restarts the model meanwhile)."""
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message, pb.TritonError.UNAVAILABLE))


OUT_OF_MEMORY, BROKEN_DEVICE = "out of memory", "broken device context"
# Text of CUDA failures that leave the context unusable for every later call (torch raises them as RuntimeError, or
# torch.AcceleratorError on newer builds): a device-side assert, an illegal address, a launch or ECC failure.
BROKEN_DEVICE_MARKERS = ("CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS", "cuDNN error",
                         "CUDA driver error", "unspecified launch failure", "uncorrectable ECC")


def device_failure(err: BaseException) -> str | None:
    """OUT_OF_MEMORY (free the cache; a smaller batch may pass), BROKEN_DEVICE (the process must restart: nothing will
    pass), or None (an ordinary failure)."""
    message = str(err)
    if type(err).__name__ == "OutOfMemoryError" or "out of memory" in message.lower():
        return OUT_OF_MEMORY
    if type(err).__name__ == "AcceleratorError" or any(marker in message for marker in BROKEN_DEVICE_MARKERS):
        return BROKEN_DEVICE
    return None


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


def answer_rowwise(pb: Any, requests: Sequence[Any], widths: Mapping[str, int],
                   compute: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> list[Any]:
    """A head step's whole execute(): run_rowwise over the batch, through answer_each (a failing batch is halved
    until the culprit is alone; INTERNAL for a request that fails alone)."""
    return answer_each(pb, requests, lambda batch: run_rowwise(pb, batch, widths, compute), failed_internally)


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


@dataclass
class BackboneBatch:
    """A dynamic batch of backbone requests flattened into conversations for a runtime, and split back.

    The backbone is callable directly, not only through the ensemble: ids are range-checked, since an
    out-of-range id would trip a device-side assert that breaks the GPU context for every later request.
    """

    responses: list[Any]  # per request; None until answered
    input_ids: list[np.ndarray]  # one unpadded 1-D array per conversation
    gate_positions: np.ndarray
    reward_positions: np.ndarray
    owners: list[int]  # the request of each group of conversations
    sizes: list[int]  # conversations per owner

    @classmethod
    def gather(cls, pb: Any, requests: Sequence[Any], vocab_size: int, max_tokens: int) -> BackboneBatch:
        responses: list[Any] = [None] * len(requests)
        ids: list[np.ndarray] = []
        gates, rewards, owners, sizes = [], [], [], []
        for index, request in enumerate(requests):
            try:
                rows, gate, reward = backbone_rows(pb, request, vocab_size, max_tokens)
            except RequestError as err:
                responses[index] = invalid_argument(pb, str(err))
                continue
            ids.extend(rows)
            gates.append(gate)
            rewards.append(reward)
            owners.append(index)
            sizes.append(len(rows))
        return cls(responses, ids, np.concatenate(gates) if gates else np.zeros(0, np.int64),
                   np.concatenate(rewards) if rewards else np.zeros(0, np.int64), owners, sizes)

    def answer(self, pb: Any, gate_hidden: np.ndarray, reward_hidden: np.ndarray) -> list[Any]:
        for index, gate_rows, reward_rows in zip(self.owners, split_rows(gate_hidden, self.sizes),
                                                 split_rows(reward_hidden, self.sizes)):
            self.responses[index] = tensors_response(pb, {GATE_HIDDEN.name: gate_rows, REWARD_HIDDEN.name: reward_rows})
        return self.responses


def backbone_rows(pb: Any, request: Any, vocab_size: int,
                  max_tokens: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """A request's rows → (unpadded 1-D token arrays, gate positions, reward positions). A conversation longer
    than the model's positions (`max_tokens`) is refused alone: it would score garbage, or exhaust memory in one
    forward that no token budget splits."""
    input_ids = input_array(pb, request, INPUT_IDS.name)
    gate = input_array(pb, request, GATE_POSITION.name).reshape(-1)
    reward = input_array(pb, request, REWARD_POSITION.name).reshape(-1)
    if input_ids.ndim != 2 or not (input_ids.shape[0] == gate.shape[0] == reward.shape[0]):
        raise RequestError(f"{INPUT_IDS.name} [batch, tokens], {GATE_POSITION.name} and {REWARD_POSITION.name} "
                           "[batch, 1] disagree in batch")
    if input_ids.shape[0] == 0:
        raise RequestError("the request holds no rows; send at least one conversation")
    length = input_ids.shape[1]
    if ((gate < 0) | (gate >= length) | (reward < 0) | (reward >= length)).any():
        raise RequestError(f"{GATE_POSITION.name} and {REWARD_POSITION.name} must lie in [0, {length})")
    if input_ids.size and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise RequestError(f"{INPUT_IDS.name} must lie in [0, {vocab_size})")
    # Rows were padded to the request's longest; a row needs tokens up to its furthest position only.
    ends = np.maximum(gate, reward) + 1
    if ends.max() > max_tokens:
        raise RequestError(f"a conversation is read up to token {int(ends.max())}; this backbone takes at most "
                           f"{max_tokens} tokens (max_position_embeddings)")
    return [input_ids[row, : ends[row]] for row in range(input_ids.shape[0])], gate, reward
