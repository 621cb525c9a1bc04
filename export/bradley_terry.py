"""A Bradley–Terry reward model (armorm.model.bradley_terry) → its models under NAME: NAME (the ensemble),
NAME_tokenizer and NAME_backbone (ArmoRM's step templates: same code, this checkpoint's files) and NAME_score.
The packed backbone is checked against Hugging Face's LlamaModel (Llama-3.1 RoPE scaling included) before the
repository is used."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from armorm.model import bradley_terry
from armorm.model.backbone import ArmoRMBackbone
from armorm.model.checkpoint import Checkpoint, load_tokenizer
from armorm.model.conversation import RETOKENIZE_BOS, ConversationTokenizer, InputLimits
from armorm.model.packed import PackedBackbone
from armorm.reference import ParityRows, hf_llama
from armorm_client import contract
from armorm_client.samples import parity_conversations
from armorm_export.model_files import (
    TEMPLATES,
    ExportOptions,
    apply_contract,
    backbone_fingerprint,
    backbones_by_fingerprint,
    guard_shared_backbone,
    read_config,
    set_parameter,
    write_backbone_weights,
    write_config,
    write_tokenizer_model,
)
from armorm_export.parity import check_runtime
from armorm_export.progress import say, step

# Each step's template (its contract spec) and the suffix of the model it becomes (the ensemble template names its
# steps bradley_terry_<suffix>).
STEP_SUFFIXES = {contract.TOKENIZER: "tokenizer", contract.BACKBONE: "backbone", contract.SCORE_HEAD: "score"}


# The templates a Bradley–Terry model borrows: ArmoRM's regression head (one row: the score) and, for NAME_text, its
# own ensemble reading `text`.
TEMPLATES_OF = {contract.SCORE_HEAD: contract.REGRESSION, contract.BRADLEY_TERRY_TEXT: contract.BRADLEY_TERRY}


def served_names(name: str) -> dict[contract.ModelSpec, str]:
    """Each template (its contract spec) → the model it becomes under `name`."""
    return {**{spec: f"{name}_{suffix}" for spec, suffix in STEP_SUFFIXES.items()}, contract.BRADLEY_TERRY: name,
            contract.BRADLEY_TERRY_TEXT: f"{name}_text"}


def write_models(checkpoint: Checkpoint, output: Path, name: str, options: ExportOptions) -> dict[str, dict]:
    if options.backbone != "torch_packed":
        raise ValueError(f"a Bradley–Terry model is served with --backbone torch_packed only (got {options.backbone})")
    names = served_names(name)
    own_backbone = names[contract.BACKBONE]
    fingerprint = backbone_fingerprint(checkpoint)
    guard_shared_backbone(output, own_backbone, fingerprint)
    shared = {k: v for k, v in backbones_by_fingerprint(output).items() if v != own_backbone}.get(fingerprint)
    if shared is not None:  # the same weights already serve another model: run on that backbone, no second copy
        say(f"the backbone is {shared}'s, tensor for tensor: {name} runs on it")
        names[contract.BACKBONE] = shared
        shutil.rmtree(output / own_backbone, ignore_errors=True)
        share_backbone(output / shared)
    for spec, served in names.items():
        if spec is not contract.BACKBONE or shared is None:
            copy_template(spec, output / served, names)
    with step("tokenizer"):
        write_tokenizer_model(checkpoint, output / names[contract.TOKENIZER], options, RETOKENIZE_BOS)
    with step("score head"):
        weights = bradley_terry.score_weights(checkpoint.state, checkpoint.config.hidden_size)
        weights.save(output / names[contract.SCORE_HEAD] / "1" / contract.REGRESSION_WEIGHTS)
    if shared is None:
        write_backbone_weights(checkpoint, output / own_backbone, fingerprint)
        path = output / own_backbone / "config.pbtxt"
        config = read_config(path)
        set_parameter(config, "runtime", "torch_packed")
        if options.instance_kind == "gpu":
            for group in config.instance_group:
                group.kind = group.KIND_GPU
        write_config(path, config, f"runtime torch_packed, backbone on {options.instance_kind}")
    if options.verify:
        with step("checking the packed backbone against Hugging Face's LlamaModel"):
            error = check_runtime("the packed runtime", packed_runtime(checkpoint).run, parity_rows(checkpoint),
                                  options.atol)
            say(f"max |torch_packed - reference| over hidden rows = {error:.3g} (atol {options.atol:g})")
    entry = {"backbone": shared} if shared else {}
    return {name: entry, names[contract.BRADLEY_TERRY_TEXT]: entry}


def share_backbone(folder: Path) -> None:
    """Several models run on this backbone: the same conversation twice in a batch is computed once."""
    config = read_config(folder / "config.pbtxt")
    set_parameter(config, "dedup_identical", "true")
    write_config(folder / "config.pbtxt", config, "a backbone several models share: dedup_identical")


def copy_template(spec: contract.ModelSpec, folder: Path, names: dict[contract.ModelSpec, str]) -> None:
    """A fresh copy of the template folder, named and wired for this model, inputs and outputs from the contract."""
    shutil.rmtree(folder, ignore_errors=True)
    template = TEMPLATES_OF.get(spec, spec)
    shutil.copytree(TEMPLATES / template.name, folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc",
                                                                                     ".gitkeep"))
    (folder / "1").mkdir(exist_ok=True)
    config = read_config(folder / "config.pbtxt")
    config.name = names[spec]
    apply_contract(config, spec)
    by_template = {f"{contract.BRADLEY_TERRY.name}_{suffix}": names[spec] for spec, suffix in STEP_SUFFIXES.items()}
    for ensemble_step in config.ensemble_scheduling.step:
        ensemble_step.model_name = by_template[ensemble_step.model_name]
    if spec is contract.BRADLEY_TERRY_TEXT:  # the tokenizer reads templated text instead of messages
        first = config.ensemble_scheduling.step[0]
        first.input_map.clear()
        first.input_map[contract.TEXT.name] = contract.TEXT.name
    write_config(folder / "config.pbtxt", config, f"{spec.name} template as {names[spec]}, I/O from the contract")


def packed_runtime(checkpoint: Checkpoint) -> PackedBackbone:
    return PackedBackbone(ArmoRMBackbone.from_state_dict(checkpoint.config, checkpoint.state, torch.float32))


@torch.inference_mode()
def parity_rows(checkpoint: Checkpoint) -> ParityRows:
    """The sample conversations tokenized as served, their hidden rows from Hugging Face's LlamaModel (fp32)."""
    tokenizer = ConversationTokenizer(load_tokenizer(checkpoint.directory), InputLimits(max_tokens=1 << 20),
                                      RETOKENIZE_BOS)
    tokens = [tokenizer.tokenize(messages) for messages in parity_conversations()]
    model = hf_llama(checkpoint.config.to_dict(), checkpoint.state, torch.float32, "cpu")
    hidden = [model(input_ids=torch.as_tensor(t.input_ids).unsqueeze(0)).last_hidden_state[0] for t in tokens]
    return ParityRows(
        input_ids=[t.input_ids for t in tokens],
        gate_positions=np.array([t.gate_position for t in tokens]),
        reward_positions=np.array([t.reward_position for t in tokens]),
        gate_hidden=torch.stack([h[t.gate_position] for h, t in zip(hidden, tokens)]).numpy(),
        reward_hidden=torch.stack([h[t.reward_position] for h, t in zip(hidden, tokens)]).numpy(),
    )
