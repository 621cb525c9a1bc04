"""Where a served request's time goes: per model, queue and compute per request from Triton's own statistics
(its /metrics counters), and per process, CPU seconds (psutil) per request. Read before and after a run; the
difference is that run's. For `make bench` (scripts/bench.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

from armorm.testing.prometheus import Samples, scrape, total
from armorm_client import contract

MODELS = [spec.name for spec in (contract.ENSEMBLE, *contract.STEPS)]
# Triton's cumulative counters per model (µs and counts).
QUEUE, INPUT, INFER, OUTPUT = ("nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
                               "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us")
SUCCESS, EXECUTIONS = "nv_inference_request_success", "nv_inference_exec_count"
COUNTERS = (QUEUE, INPUT, INFER, OUTPUT, SUCCESS, EXECUTIONS)
PROCESSES = ("client", "gateway", "tritonserver", *(spec.name for spec in contract.STEPS))


def process_label(command: str) -> str | None:
    """Which part of the served system a process of armorm-serve's tree is (None: not ours to count)."""
    if "triton_python_backend_stub" in command:
        return next((name for name in (s.name for s in contract.STEPS) if f"/{name}/" in command), None)
    if "tritonserver" in command.split(" ", 1)[0]:
        return "tritonserver"
    return None


@dataclass(frozen=True)
class Snapshot:
    counters: dict[str, dict[str, float]]  # model → counter → value
    cpu_s: dict[str, float]  # process label → user + system CPU seconds

    @classmethod
    def take(cls, metrics_url: str, server_pid: int) -> Snapshot:
        samples: Samples = scrape(metrics_url)
        counters = {m: {c: total(samples, c, model=m) for c in COUNTERS} for m in MODELS}
        cpu = dict.fromkeys(PROCESSES, 0.0)
        cpu["client"] = cpu_seconds(psutil.Process(os.getpid()))
        server = psutil.Process(server_pid)
        cpu["gateway"] = cpu_seconds(server)  # armorm-serve runs the gateway in its own process
        for child in server.children(recursive=True):
            try:
                label = process_label(" ".join(child.cmdline()))
                if label is not None:
                    cpu[label] += cpu_seconds(child)
            except psutil.Error:  # gone since it was listed
                continue
        return cls(counters, cpu)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


@dataclass(frozen=True)
class ModelStage:
    requests: int
    queue_ms: float  # mean per request
    compute_ms: float  # input + infer + output, mean per request (a batch's time counts for each of its requests)
    batch: float  # requests per execution


@dataclass(frozen=True)
class Breakdown:
    models: dict[str, ModelStage]
    cpu_ms: dict[str, float]  # per process, per conversation scored

    @classmethod
    def between(cls, before: Snapshot, after: Snapshot, conversations: int) -> Breakdown:
        models = {}
        for model in MODELS:
            delta = {c: after.counters[model][c] - before.counters[model][c] for c in COUNTERS}
            requests = max(int(delta[SUCCESS]), 1)
            models[model] = ModelStage(int(delta[SUCCESS]), delta[QUEUE] / requests / 1e3,
                                       (delta[INPUT] + delta[INFER] + delta[OUTPUT]) / requests / 1e3,
                                       delta[SUCCESS] / max(delta[EXECUTIONS], 1))
        cpu = {label: (after.cpu_s[label] - before.cpu_s[label]) * 1e3 / max(conversations, 1) for label in PROCESSES}
        return cls(models, cpu)

    def lines(self) -> list[str]:
        short = {name: name.removeprefix("armorm_") or "ensemble" for name in MODELS}
        short[contract.ENSEMBLE.name] = "ensemble"
        stages = "  ".join(f"{short[m]} {s.queue_ms:.1f}+{s.compute_ms:.1f} (×{s.batch:.1f})"
                           for m, s in self.models.items())
        cpu = "  ".join(f"{label.removeprefix('armorm_')} {ms:.2f}" for label, ms in self.cpu_ms.items())
        return [f"    queue+compute ms per request (mean batch): {stages}",
                f"    CPU ms per conversation: {cpu}  (total {sum(self.cpu_ms.values()):.2f})"]
