"""The default checkpoint is in ArmoRM's exact on-disk format and loads through the real loader."""

import json

import torch
from safetensors import safe_open

from armorm.model.checkpoint import Checkpoint, load_tokenizer, weight_files


def test_config_keys_and_values(tiny_checkpoint):
    raw = json.loads((tiny_checkpoint / "config.json").read_text())
    assert raw["architectures"] == ["LlamaForRewardModelWithGating"]
    assert raw["auto_map"]["AutoModelForSequenceClassification"] == "modeling_custom.LlamaForRewardModelWithGating"
    for key, value in {"vocab_size": 128257, "pad_token_id": 128256, "bos_token_id": 128000, "num_objectives": 19,
                       "gating_n_hidden": 3, "torch_dtype": "float32"}.items():
        assert raw[key] == value, key
    # Same keys as ArmoRM's config.json, other values: a field the served path dropped would fall back to
    # ArmoRMConfig's default (ArmoRM's value) and fail parity against the reference, which reads config.json.
    from armorm.model.config import ArmoRMConfig

    defaults = ArmoRMConfig()
    for key in ("rms_norm_eps", "rope_theta", "max_position_embeddings", "gating_temperature", "hidden_size",
                "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "gating_hidden_dim"):
        assert raw[key] != getattr(defaults, key), key


def test_parameter_names_and_dtypes(tiny_checkpoint):
    dtypes = {}
    for path in weight_files(tiny_checkpoint):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                dtypes[name] = handle.get_tensor(name).dtype
    assert dtypes["regression_layer.weight"] == torch.float32
    assert dtypes["model.embed_tokens.weight"] == torch.bfloat16
    heads = {"gating.logit_scale", "reward_transform_matrix", *(f"gating.layers.{i}.{p}" for i in range(4)
                                                                 for p in ("weight", "bias"))}
    assert heads <= set(dtypes)
    assert all(n.startswith("model.") for n in set(dtypes) - heads - {"regression_layer.weight"})


def test_heads_are_distinguishable_from_defaults(tiny_checkpoint):
    state = Checkpoint.load(tiny_checkpoint).state
    assert state["gating.logit_scale"].float().item() != 1.0
    assert not torch.equal(state["reward_transform_matrix"].float(), torch.eye(19))


def test_tokenizer_has_pad_and_adds_no_bos(tiny_checkpoint):
    tokenizer = load_tokenizer(tiny_checkpoint)
    assert tokenizer.convert_tokens_to_ids("[PAD]") == 128256 and tokenizer.pad_token_id == 128256
    assert tokenizer("hello")["input_ids"][0] != 128000
    assert tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False).startswith(
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>")
