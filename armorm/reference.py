"""The in-process reference forward pass: Hugging Face `LlamaModel` + ArmoRM's heads, one conversation
at a time, as the model card runs it. Tests compare the served results and the ONNX export with it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from armorm import heads
from armorm.checkpoint import Checkpoint, load_tokenizer
from armorm.config import ArmoRMConfig
from armorm.conversation import ConversationTokenizer, InputLimits, TokenizedConversation, validate_messages
from armorm.heads import HeadWeights
from armorm_client.result import ArmoRMScore


def hf_llama(config: ArmoRMConfig, state: dict[str, torch.Tensor], dtype: torch.dtype,
             device: torch.device | str, attn_implementation: str = "sdpa") -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaModel

    llama_config = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        rms_norm_eps=config.rms_norm_eps,
        rope_theta=config.rope_theta,
        max_position_embeddings=config.max_position_embeddings,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        attn_implementation=attn_implementation,
    )
    with torch.device("meta"):
        model = LlamaModel(llama_config)
    weights = {name.removeprefix("model."): t.to(dtype) for name, t in state.items() if name.startswith("model.")}
    model.load_state_dict(weights, strict=True, assign=True)
    rotary = type(model.rotary_emb)
    model.rotary_emb = torch.nn.Identity()  # its buffer is on meta: set aside through the cast below
    model = model.to(device=device, dtype=dtype)
    # The rotary inv_freq buffer was created on meta, and .to(dtype) would make it bf16 (RoPE phases off by
    # radians 1000+ tokens apart). from_pretrained(torch_dtype=bfloat16), what the model card runs, keeps it
    # fp32: rebuild it so, after the cast.
    model.rotary_emb = rotary(config=llama_config).to(device)  # moved, never cast: inv_freq stays fp32
    return model.eval()


@dataclass(frozen=True)
class ParityRows:
    """Reference hidden rows of some conversations, with the inputs a backbone runtime takes
    (`runtime.run(input_ids, gate_positions, reward_positions)`)."""

    input_ids: list[np.ndarray]
    gate_positions: np.ndarray
    reward_positions: np.ndarray
    gate_hidden: np.ndarray  # [n, hidden] fp32
    reward_hidden: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    def max_error(self, gate_hidden: object, reward_hidden: object) -> float:
        """Largest |runtime − reference| over both rows of every conversation."""
        return max(float(np.abs(np.asarray(gate_hidden, dtype=np.float32) - self.gate_hidden).max()),
                   float(np.abs(np.asarray(reward_hidden, dtype=np.float32) - self.reward_hidden).max()))


class ArmoRMReference:
    def __init__(self, checkpoint: str | Path | Checkpoint, device: str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.load(checkpoint)
        self.config = ckpt.config
        self.device = torch.device(device)
        self.dtype = dtype
        self.tokenizer = ConversationTokenizer(load_tokenizer(ckpt.directory),
                                               InputLimits(max_tokens=ckpt.config.max_position_embeddings))
        self.backbone = hf_llama(ckpt.config, ckpt.state, dtype, self.device)
        self.heads = HeadWeights.from_state_dict(ckpt.state, ckpt.config).to(self.device)

    @torch.inference_mode()
    def hidden_rows(self, messages: list[dict[str, str]]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(gate_hidden [hidden], reward_hidden [hidden], num_tokens) for one conversation."""
        tokens = self.tokenizer.tokenize(validate_messages(messages))
        gate_hidden, reward_hidden = self.rows_of(tokens)
        return gate_hidden, reward_hidden, tokens.num_tokens

    @torch.inference_mode()
    def rows_of(self, tokens: TokenizedConversation) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate_hidden, reward_hidden) [hidden] of an already tokenized conversation."""
        ids = torch.as_tensor(tokens.input_ids, device=self.device).unsqueeze(0)
        hidden = self.backbone(input_ids=ids).last_hidden_state[0]
        return hidden[tokens.gate_position], hidden[tokens.reward_position]

    def parity_rows(self, conversations: Sequence[list[dict[str, str]]]) -> ParityRows:
        """Each conversation tokenized once, its reference rows as fp32 numpy: what parity checks compare."""
        tokens = [self.tokenizer.tokenize(validate_messages(m)) for m in conversations]
        rows = [self.rows_of(t) for t in tokens]
        return ParityRows(
            input_ids=[t.input_ids for t in tokens],
            gate_positions=np.array([t.gate_position for t in tokens]),
            reward_positions=np.array([t.reward_position for t in tokens]),
            gate_hidden=torch.stack([g for g, _ in rows]).float().cpu().numpy(),
            reward_hidden=torch.stack([r for _, r in rows]).float().cpu().numpy(),
        )

    @torch.inference_mode()
    def score(self, messages: list[dict[str, str]]) -> ArmoRMScore:
        gate_hidden, reward_hidden, num_tokens = self.hidden_rows(messages)
        score, rewards, gating, coefficients = heads.score_rows(gate_hidden.unsqueeze(0), reward_hidden.unsqueeze(0),
                                                               self.heads)
        return ArmoRMScore(
            score=float(score[0]),
            rewards=rewards[0].cpu().numpy(),
            gating=gating[0].cpu().numpy(),
            coefficients=coefficients[0].cpu().numpy(),
            num_tokens=num_tokens,
        )
