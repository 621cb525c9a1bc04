"""The I/O contract of the served model repository, declared once.

Every `config.pbtxt` under `model_repository/` is checked against these specs (tests/test_contract.py),
the export writes nothing that disagrees with them, and the client reads tensor names from here. It lives in
the client package because that is the light one (numpy and tritonclient only): the server package imports it
from here, so both sides share one declaration.
"""

from __future__ import annotations

from dataclasses import dataclass

OBJECTIVES: tuple[str, ...] = (
    "helpsteer-helpfulness",
    "helpsteer-correctness",
    "helpsteer-coherence",
    "helpsteer-complexity",
    "helpsteer-verbosity",
    "ultrafeedback-overall_score",
    "ultrafeedback-instruction_following",
    "ultrafeedback-truthfulness",
    "ultrafeedback-honesty",
    "ultrafeedback-helpfulness",
    "beavertails-is_safe",
    "prometheus-score",
    "argilla-overall_quality",
    "argilla-judge_lm",
    "code-complexity",
    "code-style",
    "code-explanation",
    "code-instruction-following",
    "code-readability",
)
NUM_OBJECTIVES = len(OBJECTIVES)


# -1 where the size depends on the checkpoint (hidden size) or on the request (tokens).
VARIABLE = -1


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # Triton's DataType enum name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]
    ragged: bool = False
    optional: bool = False  # a request may leave it out (the tokenizer takes `messages` or `text`)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    backend: str  # "python" or "" for the ensemble platform
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)


# The conversations of a request, one per row, in one of two forms: each public ensemble takes one (required), the
# tokenizer behind them both (each optional there: a request brings exactly one).
MESSAGES = TensorSpec("messages", "TYPE_STRING", (1,))  # JSON [{"role", "content"}, ...]
TEXT = TensorSpec("text", "TYPE_STRING", (1,))  # chat-templated, special tokens kept
INPUT_IDS = TensorSpec("input_ids", "TYPE_INT64", (VARIABLE,))
GATE_POSITION = TensorSpec("gate_position", "TYPE_INT64", (1,))
REWARD_POSITION = TensorSpec("reward_position", "TYPE_INT64", (1,))
NUM_TOKENS = TensorSpec("num_tokens", "TYPE_INT64", (1,))
GATE_HIDDEN = TensorSpec("gate_hidden", "TYPE_FP32", (VARIABLE,))
REWARD_HIDDEN = TensorSpec("reward_hidden", "TYPE_FP32", (VARIABLE,))
REWARDS = TensorSpec("rewards", "TYPE_FP32", (NUM_OBJECTIVES,))
GATING = TensorSpec("gating", "TYPE_FP32", (NUM_OBJECTIVES,))
COEFFICIENTS = TensorSpec("coefficients", "TYPE_FP32", (NUM_OBJECTIVES,))
SCORE = TensorSpec("score", "TYPE_FP32", (1,))

TOKENIZER = ModelSpec(
    "armorm_tokenizer", "python",
    tuple(TensorSpec(t.name, t.data_type, t.dims, optional=True) for t in (MESSAGES, TEXT)),
    (INPUT_IDS, GATE_POSITION, REWARD_POSITION, NUM_TOKENS),
)
BACKBONE = ModelSpec(
    "armorm_backbone",
    "python",
    # Conversations differ in length: ragged batching lets one execute() take them all.
    (TensorSpec(INPUT_IDS.name, INPUT_IDS.data_type, INPUT_IDS.dims, ragged=True), GATE_POSITION, REWARD_POSITION),
    (GATE_HIDDEN, REWARD_HIDDEN),
)
REGRESSION = ModelSpec("armorm_regression", "python", (REWARD_HIDDEN,), (REWARDS,))
GATING_MODEL = ModelSpec("armorm_gating", "python", (GATE_HIDDEN,), (GATING,))
ENSEMBLE = ModelSpec("armorm", "", (MESSAGES,), (SCORE, REWARDS, GATING, COEFFICIENTS, NUM_TOKENS))
# The same pipeline for templated text: no public model has an optional input (perf_analyzer refuses those in its
# shared-memory modes).
TEXT_ENSEMBLE = ModelSpec("armorm_text", "", (TEXT,), ENSEMBLE.outputs)
ENSEMBLES: tuple[ModelSpec, ...] = (ENSEMBLE, TEXT_ENSEMBLE)
# The last step emits every ensemble output, passing rewards, gating and num_tokens through: Triton 2.51's
# ensemble deadlocks ("at least one output is not set") when a client asks for a subset of outputs and
# an unrequested one is also read by a later step.
TRANSFORM = ModelSpec("armorm_transform", "python", (REWARDS, GATING, NUM_TOKENS), ENSEMBLE.outputs)
PASSED_THROUGH: tuple[TensorSpec, ...] = (REWARDS, GATING, NUM_TOKENS)

STEPS: tuple[ModelSpec, ...] = (TOKENIZER, BACKBONE, REGRESSION, GATING_MODEL, TRANSFORM)
ALL_MODELS: tuple[ModelSpec, ...] = (*STEPS, *ENSEMBLES)

# A Bradley–Terry reward model (LlamaForSequenceClassification, one logit: FsfairX, Skywork-Reward), exported under
# a name of its own: ensemble NAME (messages → the raw logit as `score`) over NAME_tokenizer and NAME_backbone
# (the templates above) and NAME_score. The names here are the templates'; the export puts NAME in front.
SCORE_HEAD = ModelSpec("bradley_terry_score", "python", (REWARD_HIDDEN,), (SCORE,))  # the REGRESSION template
BRADLEY_TERRY = ModelSpec("bradley_terry", "", (MESSAGES,), (SCORE,))
# NAME_text: the same steps for templated text (OpenRLHF's queries, slime's templated prompts); the BRADLEY_TERRY
# template with its first step reading `text`.
BRADLEY_TERRY_TEXT = ModelSpec("bradley_terry_text", "", (TEXT,), (SCORE,))
BRADLEY_TERRY_MODELS: tuple[ModelSpec, ...] = (BRADLEY_TERRY,)  # the templates of their own

# A mixture of the repository's reward models (armorm.model.mixture), named at export: NAME takes messages,
# NAME_text templated text; each answers the weighted sum as `score` and every member's score, in the mixture's
# member order (its mixture.json), as `member_scores`.
MEMBER_SCORES = TensorSpec("member_scores", "TYPE_FP32", (VARIABLE,))
MIXTURE = ModelSpec("mixture", "python", (MESSAGES,), (SCORE, MEMBER_SCORES))
MIXTURE_TEXT = ModelSpec("mixture_text", "python", (TEXT,), MIXTURE.outputs)

# A pairwise preference model (RLHFlow/pair-preference-model-LLaMA3-8B) exported under NAME: one JSON pair per row,
# {"prompt": messages or text, "response_a": ..., "response_b": ...} → P(A ≻ B), both orders averaged. Its backbone
# is NAME_backbone (the BACKBONE template).
PAIR = TensorSpec("pair", "TYPE_STRING", (1,))
PREFERENCE = TensorSpec("preference", "TYPE_FP32", (1,))
PAIRWISE = ModelSpec("pairwise", "python", (PAIR,), (PREFERENCE,))

# Files that the export writes next to the models that read them (under <model>/1/).
TOKENIZER_DIR = "tokenizer"
BACKBONE_ONNX = "model.onnx"
BACKBONE_WEIGHTS = "backbone.safetensors"  # model.* tensors, as stored, for the torch_packed runtime
CHOICE_WEIGHTS = "choices.safetensors"  # a pairwise model's LM-head rows of "A" and "B" [2, hidden]
# At the repository's root: each public ensemble and its kind (the gateway opens these to inference).
MANIFEST = "reward_models.json"
BACKBONE_CONFIG = "config.json"
REGRESSION_WEIGHTS = "regression.safetensors"
GATING_WEIGHTS = "gating.safetensors"
TRANSFORM_WEIGHTS = "transform.safetensors"
OBJECTIVES_FILE = "objectives.json"

# Restricted-API headers: the launcher configures them, the client sends them. Triton expects the keys as
# gRPC metadata under GRPC_HEADER_PREFIX (HTTP: the bare name).
ADMIN_HEADER = "armorm-admin-key"
API_KEY_HEADER = "armorm-api-key"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
