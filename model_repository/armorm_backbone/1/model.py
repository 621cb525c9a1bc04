"""Triton glue for the backbone: ragged batches of token ids → the two hidden rows per conversation.
The runtime (armorm.onnx_backbone) pads each token-budget group and runs the exported ONNX model."""

import json

import numpy as np
import triton_python_backend_utils as pb

from armorm.contract import BACKBONE_CONFIG, BACKBONE_ONNX
from armorm.onnx_backbone import OnnxBackbone, onnx_session
from armorm.triton_glue import ModelContext, RequestError, input_array, invalid_argument, tensors_response


def conversations(request):
    """A request's rows → (list of unpadded 1-D token arrays, gate positions, reward positions)."""
    input_ids = input_array(pb, request, "input_ids")
    gate = input_array(pb, request, "gate_position").reshape(-1)
    reward = input_array(pb, request, "reward_position").reshape(-1)
    if input_ids.ndim != 2 or not (input_ids.shape[0] == gate.shape[0] == reward.shape[0]):
        raise RequestError("input_ids [batch, tokens], gate_position and reward_position [batch, 1] disagree in batch")
    length = input_ids.shape[1]
    if ((gate < 0) | (gate >= length) | (reward < 0) | (reward >= length)).any():
        raise RequestError(f"gate_position and reward_position must lie in [0, {length})")
    # Rows were padded to the request's longest; a row needs tokens up to its furthest position only.
    ends = np.maximum(gate, reward) + 1
    return [input_ids[row, : ends[row]] for row in range(input_ids.shape[0])], gate, reward


class TritonPythonModel:
    def initialize(self, args):
        context = ModelContext.from_args(args)
        runtime = context.parameter("runtime", "onnxruntime")
        if runtime != "onnxruntime":
            raise ValueError(f"armorm_backbone: unknown runtime {runtime!r} (supported: onnxruntime)")
        config = json.loads((context.version_dir / BACKBONE_CONFIG).read_text())
        session = onnx_session(
            context.version_dir / BACKBONE_ONNX,
            use_cuda=context.instance_kind != "CPU",
            threads=context.int_parameter("intra_op_threads", 0),
        )
        self.backbone = OnnxBackbone(session, int(config["pad_token_id"]),
                                     context.int_parameter("max_batch_tokens", 16384))
        self.hidden_size = int(config["hidden_size"])

    def execute(self, requests):
        responses = [None] * len(requests)
        ids, gates, rewards, owners = [], [], [], []
        for index, request in enumerate(requests):
            try:
                rows, gate, reward = conversations(request)
            except RequestError as err:
                responses[index] = invalid_argument(pb, str(err))
                continue
            ids.extend(rows)
            gates.append(gate)
            rewards.append(reward)
            owners.extend([index] * len(rows))
        if ids:
            gate_hidden, reward_hidden = self.backbone.run(ids, np.concatenate(gates), np.concatenate(rewards))
            owners = np.asarray(owners)
            for index in np.unique(owners):
                rows = owners == index
                responses[index] = tensors_response(
                    pb, {"gate_hidden": gate_hidden[rows], "reward_hidden": reward_hidden[rows]}
                )
        return responses
