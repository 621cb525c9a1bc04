"""Example conversations: the model card's prompt, used by the demo and the export's parity check."""

from __future__ import annotations

from pathlib import Path

# 16 preference pairs (prompt, chosen, rejected) across RewardBench's sections and prior sets, for the demo and
# tests: `armorm-score --pairs "$(python -c 'import armorm_client.samples as s; print(s.SAMPLE_PAIRS)')"`.
SAMPLE_PAIRS = Path(__file__).resolve().parent / "sample_pairs.jsonl"

MODEL_CARD_PROMPT = 'What are some synonyms for the word "beautiful"?'
# The first is the model card's response; the other two bracket it (more complete, unhelpful).
MODEL_CARD_RESPONSES = (
    "Nicely, Beautifully, Handsome, Stunning, Wonderful, Gorgeous, Pretty, Stunning, Elegant",
    'Some synonyms for "beautiful" are: attractive, gorgeous, lovely, stunning, pretty, elegant, '
    "exquisite, radiant and graceful.",
    "I don't know.",
)


def model_card_conversations() -> list[list[dict[str, str]]]:
    return [
        [{"role": "user", "content": MODEL_CARD_PROMPT}, {"role": "assistant", "content": response}]
        for response in MODEL_CARD_RESPONSES
    ]


def parity_conversations() -> list[list[dict[str, str]]]:
    """A handful of differently shaped conversations for the export's ONNX check."""
    return model_card_conversations() + [
        [{"role": "user", "content": MODEL_CARD_PROMPT}, {"role": "assistant", "content": "Lovely."}],
        [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And times 3?"},
            {"role": "assistant", "content": "12, since (2+2)·3 = 12."},
        ],
    ]
