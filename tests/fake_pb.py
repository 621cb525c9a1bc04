"""A typed stand-in for `triton_python_backend_utils`, enough to drive the served model.py files
in-process: the same calls, real numpy tensors, errors kept for inspection."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np


class TritonError(Exception):
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS = range(7)

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


@dataclass
class Tensor:
    _name: str
    _array: np.ndarray

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


@dataclass
class InferenceRequest:
    inputs: list[Tensor]


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None) -> None:
        self.output_tensors = output_tensors or []
        self._error = error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def output(self, name: str) -> np.ndarray:
        return next(t.as_numpy() for t in self.output_tensors if t.name() == name)


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in request.inputs if t.name() == name), None)


def request(**inputs: np.ndarray) -> InferenceRequest:
    return InferenceRequest([Tensor(name, value) for name, value in inputs.items()])


def module() -> ModuleType:
    fake = ModuleType("triton_python_backend_utils")
    for name in ("TritonError", "Tensor", "InferenceRequest", "InferenceResponse", "get_input_tensor_by_name",
                 "MetricFamily", "Logger"):
        setattr(fake, name, globals()[name])
    return fake


def load_model(repository: Path, model_name: str, monkeypatch) -> object:
    """Import <repository>/<model>/1/model.py against the fake module and call initialize() as Triton does.
    Each model starts with an empty log and no metrics, as a fresh stub process would."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module())
    Logger.messages.clear()
    MetricFamily.families.clear()
    path = repository / model_name / "1" / "model.py"
    spec = importlib.util.spec_from_file_location(f"served_{model_name}", path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    from google.protobuf import json_format

    from armorm_export.repository import read_config

    config = read_config(repository / model_name / "config.pbtxt")
    model = loaded.TritonPythonModel()
    model.initialize({
        "model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
        "model_repository": str(repository / model_name),
        "model_version": "1",
        "model_instance_kind": "CPU",
        "model_instance_device_id": "0",
    })
    return model


class MetricFamily:
    """Records increments: families[name].values[labels] = total."""

    COUNTER, GAUGE = "counter", "gauge"
    families: dict[str, MetricFamily] = {}

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind = name, kind
        self.values: dict[tuple, float] = {}
        MetricFamily.families[name] = self

    def Metric(self, labels: dict[str, str] | None = None):  # noqa: N802 - Triton's spelling
        family, key = self, tuple(sorted((labels or {}).items()))

        class _Metric:
            def increment(self, value: float) -> None:
                family.values[key] = family.values.get(key, 0.0) + value

        return _Metric()


class Logger:
    messages: list[str] = []

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.messages.append(message)

    log_warn = log_error = log_verbose = log_info
