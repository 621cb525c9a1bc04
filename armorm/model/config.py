"""ArmoRM's config.json as a typed object."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from armorm_client.contract import NUM_OBJECTIVES

LLAMA3_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass(frozen=True)
class ArmoRMConfig:
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    max_position_embeddings: int = 8192
    vocab_size: int = 128257
    bos_token_id: int = 128000
    eos_token_id: int = 128001
    pad_token_id: int = 128256
    num_objectives: int = NUM_OBJECTIVES
    gating_temperature: float = 10.0
    gating_hidden_dim: int = 1024
    gating_n_hidden: int = 3
    # Llama-3.1's RoPE scaling ({"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}); None for Llama-3.0 models such as ArmoRM.
    rope_scaling: dict[str, Any] | None = field(default=None, compare=False)
    # Everything else in config.json (architectures, auto_map, torch_dtype, ...), kept for round trips.
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ArmoRMConfig:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        scaling = raw.get("rope_scaling")
        if scaling:
            kind = scaling.get("rope_type", scaling.get("type"))
            missing = [k for k in LLAMA3_SCALING_KEYS if k not in scaling]
            if kind != "llama3" or missing:
                raise ValueError(f"rope_scaling={scaling!r} is not supported: only Llama-3.1's (rope_type llama3, "
                                 f"with {', '.join(LLAMA3_SCALING_KEYS)})")
        values = {k: raw[k] for k in known if k in raw and k != "rope_scaling"}
        values["rope_scaling"] = dict(scaling) if scaling else None
        if values.get("num_objectives", NUM_OBJECTIVES) != NUM_OBJECTIVES:
            raise ValueError(f"num_objectives={values['num_objectives']}, ArmoRM has {NUM_OBJECTIVES}")
        return cls(**values, extra={k: v for k, v in raw.items() if k not in known})

    @classmethod
    def from_file(cls, path: Path) -> ArmoRMConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        extra = values.pop("extra")
        return {**extra, **values}
