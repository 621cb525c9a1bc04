"""Triton glue for the backbone: ragged batches of token ids → the two hidden rows per conversation.

Runtimes (config parameter `runtime`): `torch_packed` (armorm.packed: padding-free, shared prompts
once) and `onnxruntime` (armorm.onnx_backbone: the exported ONNX model, right-padded groups).
"""

import json

import numpy as np
import triton_python_backend_utils as pb

from armorm.codec import split_rows
from armorm.metrics import AbortedRequests, BackboneMetrics
from armorm.triton_glue import (
    ModelContext,
    RequestError,
    answer_each,
    failed_internally,
    input_array,
    invalid_argument,
    tensors_response,
)
from armorm_client.contract import BACKBONE_CONFIG, BACKBONE_ONNX, BACKBONE_RUNTIMES, BACKBONE_WEIGHTS


def conversations(request, vocab_size):
    """A request's rows → (list of unpadded 1-D token arrays, gate positions, reward positions).

    The backbone is callable directly, not only through the ensemble: ids are range-checked, since an
    out-of-range id would trip a device-side assert that breaks the GPU context for every later request.
    """
    input_ids = input_array(pb, request, "input_ids")
    gate = input_array(pb, request, "gate_position").reshape(-1)
    reward = input_array(pb, request, "reward_position").reshape(-1)
    if input_ids.ndim != 2 or not (input_ids.shape[0] == gate.shape[0] == reward.shape[0]):
        raise RequestError("input_ids [batch, tokens], gate_position and reward_position [batch, 1] disagree in batch")
    if input_ids.shape[0] == 0:
        raise RequestError("the request holds no rows; send at least one conversation")
    length = input_ids.shape[1]
    if ((gate < 0) | (gate >= length) | (reward < 0) | (reward >= length)).any():
        raise RequestError(f"gate_position and reward_position must lie in [0, {length})")
    if input_ids.size and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise RequestError(f"input_ids must lie in [0, {vocab_size})")
    # Rows were padded to the request's longest; a row needs tokens up to its furthest position only.
    ends = np.maximum(gate, reward) + 1
    return [input_ids[row, : ends[row]] for row in range(input_ids.shape[0])], gate, reward


def torch_packed_runner(context, config):
    import torch
    from safetensors.torch import load_file

    from armorm.backbone import ArmoRMBackbone, default_dtype
    from armorm.config import ArmoRMConfig
    from armorm.packed import PackedBackbone

    device = context.torch_device()
    name = context.parameter("dtype", "auto")
    dtype = default_dtype(device) if name == "auto" else getattr(torch, name)
    threads = context.set_torch_threads(0)
    state = load_file(str(context.version_dir / BACKBONE_WEIGHTS))
    module = ArmoRMBackbone.from_state_dict(ArmoRMConfig.from_dict(config), state, dtype).to(device)
    runner = PackedBackbone(module, context.int_parameter("max_batch_tokens", 16384),
                            attention=context.parameter("attention", "auto"))
    share = context.bool_parameter("share_prompts", True)

    def run(ids, gate, reward):
        gate_hidden, reward_hidden = runner.run(ids, gate, reward, share_prompts=share)
        both = torch.stack((gate_hidden, reward_hidden)).cpu().numpy()  # one copy to the host
        return both[0], both[1], runner.last_stats

    pb.Logger.log_info(f"{context.name}: torch_packed on {device}, {dtype}, attention {runner.attention_name}, "
                       f"{threads} threads")
    return run


def onnxruntime_runner(context, config):
    from armorm.onnx_backbone import OnnxBackbone, onnx_session

    session = onnx_session(context.version_dir / BACKBONE_ONNX, use_cuda=context.instance_kind != "CPU",
                           threads=context.int_parameter("threads", 0))
    runner = OnnxBackbone(session, int(config["pad_token_id"]), context.int_parameter("max_batch_tokens", 16384))
    pb.Logger.log_info(f"{context.name}: onnxruntime with {runner.providers}")

    def run(ids, gate, reward):
        gate_hidden, reward_hidden = runner.run(ids, gate, reward)
        return gate_hidden, reward_hidden, runner.last_stats

    return run


class TritonPythonModel:
    def initialize(self, args):
        context = ModelContext.from_args(args)
        runtime = context.parameter("runtime", "torch_packed")
        if runtime not in BACKBONE_RUNTIMES:
            raise ValueError(f"{context.name}: unknown runtime {runtime!r}; use one of {', '.join(BACKBONE_RUNTIMES)}")
        config = json.loads((context.version_dir / BACKBONE_CONFIG).read_text())
        make = torch_packed_runner if runtime == "torch_packed" else onnxruntime_runner
        self.run = make(context, config)
        self.vocab_size = int(config["vocab_size"])
        self.metrics = BackboneMetrics(pb)
        self.aborted = AbortedRequests(pb, context.name)

    def execute(self, requests):
        responses = answer_each(pb, requests, self.respond, failed_internally)
        self.aborted.count(responses)
        return responses

    def respond(self, requests):
        responses = [None] * len(requests)
        ids, gates, rewards, owners, sizes = [], [], [], [], []
        for index, request in enumerate(requests):
            try:
                rows, gate, reward = conversations(request, self.vocab_size)
            except RequestError as err:
                responses[index] = invalid_argument(pb, str(err))
                continue
            ids.extend(rows)
            gates.append(gate)
            rewards.append(reward)
            owners.append(index)
            sizes.append(len(rows))
        if ids:
            # A failure (e.g. out of memory) raises: answer_each retries each request alone.
            gate_hidden, reward_hidden, stats = self.run(ids, np.concatenate(gates), np.concatenate(rewards))
            self.metrics.record(stats)
            for index, gate_rows, reward_rows in zip(owners, split_rows(gate_hidden, sizes),
                                                     split_rows(reward_hidden, sizes)):
                responses[index] = tensors_response(pb, {"gate_hidden": gate_rows, "reward_hidden": reward_rows})
        return responses
