"""ONNX export parity: the project's backbone and ONNX Runtime against the Hugging Face reference."""

import dataclasses

import numpy as np
import pytest
import torch

from armorm.model.backbone import ArmoRMBackbone
from armorm.model.checkpoint import Checkpoint
from armorm.model.onnx_backbone import OnnxBackbone, onnx_session
from armorm_client import contract
from armorm_export import onnx_backbone as exporter
from armorm_export.parity import ExportParityError, check_runtime
from tests.conversations import varied_conversations

ATOL = 1e-4


@pytest.fixture(scope="module")
def expected(reference):
    return reference.parity_rows(varied_conversations())


def onnx_runner(path, max_batch_tokens=1 << 30):
    return OnnxBackbone(onnx_session(path), 128256, max_batch_tokens)


def test_torch_backbone_matches_hugging_face_on_a_padded_batch(tiny_checkpoint, expected):
    checkpoint = Checkpoint.load(tiny_checkpoint)
    backbone = ArmoRMBackbone.from_state_dict(checkpoint.config, checkpoint.state)
    longest = max(row.shape[0] for row in expected.input_ids)
    ids = torch.full((len(expected), longest), 128256)
    for i, row in enumerate(expected.input_ids):
        ids[i, : row.shape[0]] = torch.as_tensor(row)
    with torch.inference_mode():
        gate, reward = backbone(ids, torch.as_tensor(expected.gate_positions),
                                torch.as_tensor(expected.reward_positions))
    np.testing.assert_allclose(gate.numpy(), expected.gate_hidden, atol=ATOL)
    np.testing.assert_allclose(reward.numpy(), expected.reward_hidden, atol=ATOL)


@pytest.mark.parametrize("max_batch_tokens", [1 << 20, 600])
def test_onnx_runtime_matches_reference(exported_repository, expected, max_batch_tokens):
    path = exported_repository / contract.BACKBONE.name / "1" / contract.BACKBONE_ONNX
    gate, reward = onnx_runner(path, max_batch_tokens).run(expected.input_ids, expected.gate_positions,
                                                           expected.reward_positions)
    err = expected.max_error(gate, reward)
    assert err <= ATOL, f"ONNX Runtime vs reference: max abs error {err:.3g} > {ATOL}"


def test_onnx_has_dynamic_axes_and_only_the_two_rows_out(exported_repository):
    import onnx

    model = onnx.load(str(exported_repository / contract.BACKBONE.name / "1" / contract.BACKBONE_ONNX),
                      load_external_data=False)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["input_ids"] == ["batch", "tokens"]
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert set(outputs) == {"gate_hidden", "reward_hidden"}
    # [batch, hidden]: never the [batch, tokens, hidden] sequence.
    assert all(len(shape) == 2 and shape[0] == "batch" for shape in outputs.values())


def test_large_weights_go_to_external_data(tiny_checkpoint, tmp_path, monkeypatch, expected):
    checkpoint = Checkpoint.load(tiny_checkpoint)
    monkeypatch.setattr(exporter, "PROTOBUF_LIMIT", 1 << 20)  # pretend the tiny model is over 2 GB
    path = exporter.export_backbone(checkpoint.config, checkpoint.state, tmp_path / "model.onnx")
    assert (tmp_path / "model.onnx.data").stat().st_size > 10 * (1 << 20)
    assert path.stat().st_size < (1 << 20)
    assert check_runtime("ONNX Runtime", onnx_runner(path).run, expected, ATOL) <= ATOL


def test_parity_failure_reports_the_measured_error(exported_repository, expected):
    path = exported_repository / contract.BACKBONE.name / "1" / contract.BACKBONE_ONNX
    wrong = dataclasses.replace(expected, gate_hidden=expected.gate_hidden + 0.01)
    with pytest.raises(ExportParityError, match=r"ONNX Runtime differs from the reference forward by 0\.01"):
        check_runtime("ONNX Runtime", onnx_runner(path).run, wrong, ATOL)


def test_tensorrt_is_optional(tmp_path):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed: the skip path does not apply")
    except ImportError:
        pass
    from armorm_export.tensorrt_plan import build_if_available

    assert build_if_available(tmp_path / "model.onnx", tmp_path / "model.plan", 1024) is None
    assert not (tmp_path / "model.plan").exists()


def test_one_knob_chooses_how_the_backbone_runs_and_retired_flags_say_what_replaced_them(capsys):
    from armorm_export.__main__ import main
    from armorm_export.repository import BACKBONES, ExportOptions

    assert {name: (b.runtime, b.triton_backend) for name, b in BACKBONES.items()} == {
        "torch_packed": ("torch_packed", "python"), "onnxruntime": ("onnxruntime", "python"),
        "onnxruntime-native": ("onnxruntime", "onnxruntime"), "tensorrt": ("onnxruntime", "tensorrt")}
    assert ExportOptions().serving is BACKBONES["torch_packed"]
    retired = ((["--runtime", "onnxruntime"], "--backbone onnxruntime"),
               (["--triton-backend", "tensorrt"], "--backbone tensorrt"), (["--tensorrt"], "--backbone tensorrt"))
    for flags, advice in retired:
        with pytest.raises(SystemExit) as stopped:
            main(["checkpoint", "output", *flags])
        assert stopped.value.code == 2
        assert advice in capsys.readouterr().err


def test_every_export_choice_names_a_registered_runtime():
    from armorm.runtimes import RUNTIMES
    from armorm_export.repository import BACKBONES

    assert {b.runtime for b in BACKBONES.values()} <= set(RUNTIMES)


def test_export_says_where_the_templates_are_before_loading_anything(tmp_path, monkeypatch):
    """An installed package has no source tree: without ARMORM_TEMPLATES the export must stop at once, not after
    downloading and loading a 16 GB checkpoint (a checkpoint that does not exist proves the order)."""
    import pytest

    from armorm_export import model_files, repository

    monkeypatch.setattr(model_files, "TEMPLATES", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="set ARMORM_TEMPLATES"):
        repository.export_repository("no-such/checkpoint", tmp_path / "out")


def test_a_gpu_placed_onnx_backbone_without_the_cuda_provider_refuses_to_start(exported_repository):
    import onnxruntime

    from armorm.model.onnx_backbone import MissingProviderError

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(MissingProviderError, match="install onnxruntime-gpu"):
        onnx_session(exported_repository / contract.BACKBONE.name / "1" / contract.BACKBONE_ONNX, device="cuda:0")


@pytest.mark.parametrize(("name", "expected"), [("auto", torch.float32), ("float32", torch.float32),
                                                ("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_the_dtype_parameter_takes_only_serving_dtypes(name, expected):
    from armorm.runtimes.torch_packed import serving_dtype

    assert serving_dtype(name, "cpu") is expected
    for wrong in ("float64", "int8", "Tensor", "__class__", ""):
        with pytest.raises(ValueError, match="dtype must be auto or one of float32, float16, bfloat16"):
            serving_dtype(wrong, "cpu")
