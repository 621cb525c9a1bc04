"""A pairwise preference model (armorm.model.pairwise) → its models under NAME: NAME (tokenization in both orders,
the two LM-head rows, P(A ≻ B)) and NAME_backbone (ArmoRM's backbone template with this checkpoint's weights),
checked against Hugging Face's LlamaModel before the repository is used."""

from __future__ import annotations

import shutil
from pathlib import Path

from armorm.model import pairwise
from armorm.model.checkpoint import Checkpoint, load_tokenizer
from armorm_client import contract
from armorm_export.bradley_terry import packed_runtime
from armorm_export.model_files import (
    TEMPLATES,
    TOKENIZER_FILES,
    ExportOptions,
    apply_contract,
    backbone_fingerprint,
    guard_shared_backbone,
    read_config,
    set_parameter,
    write_backbone_weights,
    write_config,
)
from armorm_export.parity import check_runtime
from armorm_export.progress import say, step


def write_models(checkpoint: Checkpoint, output: Path, name: str, options: ExportOptions) -> dict[str, dict]:
    if options.backbone != "torch_packed":
        raise ValueError(f"a pairwise model is served with --backbone torch_packed only (got {options.backbone})")
    config = checkpoint.config
    backbone = f"{name}_backbone"
    fingerprint = backbone_fingerprint(checkpoint)
    guard_shared_backbone(output, backbone, fingerprint)
    for spec, served in ((contract.PAIRWISE, name), (contract.BACKBONE, backbone)):
        folder = output / served
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(TEMPLATES / spec.name, folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (folder / "1").mkdir(exist_ok=True)
        model_config = read_config(folder / "config.pbtxt")
        model_config.name = served
        apply_contract(model_config, spec)
        if spec is contract.PAIRWISE:
            max_tokens = min(options.max_tokens or config.max_position_embeddings, config.max_position_embeddings)
            set_parameter(model_config, "backbone", backbone)
            set_parameter(model_config, "max_tokens", str(max_tokens))
        else:
            set_parameter(model_config, "runtime", "torch_packed")
            if options.instance_kind == "gpu":
                for group in model_config.instance_group:
                    group.kind = group.KIND_GPU
        write_config(folder / "config.pbtxt", model_config, f"{spec.name} template as {served}")
    with step("tokenizer and the LM head's rows of 'A' and 'B'"):
        tokenizer_dir = output / name / "1" / contract.TOKENIZER_DIR
        tokenizer_dir.mkdir(parents=True, exist_ok=True)
        for file_name in TOKENIZER_FILES:
            if (checkpoint.directory / file_name).exists():
                shutil.copy2(checkpoint.directory / file_name, tokenizer_dir / file_name)
        tied = bool(config.extra.get("tie_word_embeddings", False))
        weights = pairwise.ChoiceWeights.from_state_dict(checkpoint.state, load_tokenizer(checkpoint.directory), tied)
        weights.save(output / name / "1" / contract.CHOICE_WEIGHTS)
        say(f"choice token ids {weights.token_ids}")
    write_backbone_weights(checkpoint, output / backbone, fingerprint)
    if options.verify:
        from armorm_export.bradley_terry import parity_rows

        with step("checking the packed backbone against Hugging Face's LlamaModel"):
            error = check_runtime("the packed runtime", packed_runtime(checkpoint).run, parity_rows(checkpoint),
                                  options.atol)
            say(f"max |torch_packed - reference| over hidden rows = {error:.3g} (atol {options.atol:g})")
    return {name: {}}
