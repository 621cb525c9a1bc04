"""Every config.pbtxt, hand-written and exported, parsed with Triton's own protobuf schema and checked
against the declared I/O contract (armorm_client.contract)."""

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from armorm_client import contract
from armorm_export.repository import read_config
from tests.conversations import TEST_MAX_TOKENS

TEMPLATES = Path(__file__).resolve().parent.parent / "model_repository"


def load(repository: Path, name: str) -> mc.ModelConfig:
    return read_config(repository / name / "config.pbtxt")


def check_tensors(declared, configured, model: str, kind: str) -> None:
    by_name = {t.name: t for t in configured}
    assert set(by_name) == {t.name for t in declared}, f"{model} {kind} names"
    for spec in declared:
        tensor = by_name[spec.name]
        assert mc.DataType.Name(tensor.data_type) == spec.data_type, f"{model}.{spec.name} data_type"
        assert tuple(tensor.dims) == spec.dims, f"{model}.{spec.name} dims"
        if kind == "input":
            assert tensor.allow_ragged_batch == spec.ragged, f"{model}.{spec.name} allow_ragged_batch"
            assert tensor.optional == spec.optional, f"{model}.{spec.name} optional"


def check_repository(repository: Path) -> None:
    for spec in contract.ALL_MODELS:
        config = load(repository, spec.name)
        assert config.name == spec.name
        assert config.max_batch_size > 0, f"{spec.name} must batch"
        check_tensors(spec.inputs, config.input, spec.name, "input")
        check_tensors(spec.outputs, config.output, spec.name, "output")
        if spec.backend:
            assert config.backend == spec.backend
            assert config.HasField("dynamic_batching"), f"{spec.name} needs dynamic batching"
            # Triton 2.51 turns off batch prefetching under a queue policy: requests then wait up to 500 ms while the
            # instance idles (tests/test_scheduling.py measures it). The gateway's --max-in-flight bounds the queue.
            assert not config.dynamic_batching.HasField("default_queue_policy"), f"{spec.name}: no queue policy"
            assert not config.dynamic_batching.priority_queue_policy, f"{spec.name}: no queue policy"
            assert (repository / spec.name / "1" / "model.py").exists()
            assert config.max_batch_size >= load(repository, contract.ENSEMBLE.name).max_batch_size
        else:
            assert config.platform == "ensemble"
    for ensemble in contract.ENSEMBLES:
        check_ensemble_wiring(load(repository, ensemble.name), ensemble)


def check_ensemble_wiring(config: mc.ModelConfig, ensemble: contract.ModelSpec = contract.ENSEMBLE) -> None:
    """Each step's maps name its model's tensors (every required one, optional ones where the ensemble has them);
    every input is produced before it is read."""
    specs = {spec.name: spec for spec in contract.STEPS}
    available = {t.name for t in ensemble.inputs}
    for step in config.ensemble_scheduling.step:
        spec = specs[step.model_name]
        required = {t.name for t in spec.inputs if not t.optional}
        assert required <= set(step.input_map) <= {t.name for t in spec.inputs}, f"{spec.name} input_map keys"
        assert set(step.output_map) == {t.name for t in spec.outputs}, f"{spec.name} output_map keys"
        missing = set(step.input_map.values()) - available
        assert not missing, f"{spec.name} reads {missing} before any step produces it"
        available |= set(step.output_map.values())
    assert {t.name for t in contract.ENSEMBLE.outputs} <= available
    # Any subset of outputs must be answerable: Triton 2.51 deadlocks when an unrequested ensemble output
    # is also read by a later step, so every output comes from the last step and nothing reads it.
    last = config.ensemble_scheduling.step[-1]
    assert set(last.output_map.values()) == {t.name for t in contract.ENSEMBLE.outputs}, "outputs of the last step"
    read = {value for step in config.ensemble_scheduling.step for value in step.input_map.values()}
    assert not read & {t.name for t in contract.ENSEMBLE.outputs}, "an ensemble output is read by a step"
    assert {s.model_name for s in config.ensemble_scheduling.step} == set(specs)
    first = config.ensemble_scheduling.step[0]
    assert set(first.input_map.values()) == {t.name for t in ensemble.inputs}, "the tokenizer reads what comes in"
    assert not any(t.optional for t in ensemble.inputs), "no public model has an optional input (perf_analyzer)"


def test_templates_leave_inputs_and_outputs_to_the_contract():
    """The export writes every model's I/O from client/contract.py: a template that declared its own could drift."""
    for spec in (*contract.ALL_MODELS, *contract.BRADLEY_TERRY_MODELS, contract.MIXTURE):
        config = load(TEMPLATES, spec.name)
        assert not config.input and not config.output, f"{spec.name}: I/O belongs in the contract"
        assert config.name == spec.name
    last = load(TEMPLATES, contract.ENSEMBLE.name).ensemble_scheduling.step[-1]
    assert last.model_name == contract.TRANSFORM.name and not last.output_map


def test_exported_configs_match_the_contract(exported_repository):
    check_repository(exported_repository)
    tokenizer = load(exported_repository, contract.TOKENIZER.name)
    assert tokenizer.parameters["max_tokens"].string_value == str(TEST_MAX_TOKENS)


def test_wiring_check_catches_a_miswired_step(exported_repository):
    config = load(exported_repository, contract.ENSEMBLE.name)
    config.ensemble_scheduling.step[2].input_map["reward_hidden"] = "_gate_hidden_typo"
    with pytest.raises(AssertionError, match="reads"):
        check_ensemble_wiring(config)


def test_objective_names_ship_with_the_models(exported_repository):
    import json

    for spec in (contract.REGRESSION, *contract.ENSEMBLES):
        names = json.loads((exported_repository / spec.name / "1" / contract.OBJECTIVES_FILE).read_text())
        assert tuple(names) == contract.OBJECTIVES and len(names) == 19


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_native_backbone_configs_match_the_contract(backend, exported_repository):
    from armorm_export.native_backbone import PLATFORMS, native_backbone_config

    python_config = load(exported_repository, contract.BACKBONE.name)
    config = native_backbone_config(python_config, backend, gpu=True)
    parsed = text_format.Parse(text_format.MessageToString(config), mc.ModelConfig())  # round trip as Triton reads it
    assert parsed.platform == PLATFORMS[backend][0] and parsed.default_model_filename == PLATFORMS[backend][1]
    assert parsed.max_batch_size == python_config.max_batch_size
    assert parsed.HasField("dynamic_batching") and not parsed.dynamic_batching.HasField("default_queue_policy")
    native = contract.ModelSpec(contract.BACKBONE.name, "", tuple(
        contract.TensorSpec(t.name, t.data_type, t.dims) for t in contract.BACKBONE.inputs), contract.BACKBONE.outputs)
    check_tensors(native.inputs, parsed.input, "native backbone", "input")
    check_tensors(native.outputs, parsed.output, "native backbone", "output")
    positions = [t for t in parsed.input if t.name != "input_ids"]
    assert all(t.HasField("reshape") and list(t.reshape.shape) == [] for t in positions)
    assert parsed.instance_group[0].kind == mc.ModelInstanceGroup.Kind.KIND_GPU

