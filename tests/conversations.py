"""Varied conversations for parity tests: multi-turn, system prompts, unicode, near-empty and long
responses, and one near the test repository's token limit."""

from __future__ import annotations

TEST_MAX_TOKENS = 1024  # the test repository is exported with this limit


def turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def varied_conversations() -> list[list[dict[str, str]]]:
    long_text = " ".join(f"Step {i}: combine the inputs and check the result." for i in range(60))
    return [
        [turn("user", 'What are some synonyms for the word "beautiful"?'),
         turn("assistant", "Nicely, Beautifully, Handsome, Stunning, Wonderful, Gorgeous, Pretty, Stunning, Elegant")],
        [turn("user", "Hi"), turn("assistant", "Hello!")],
        [turn("user", "Say nothing."), turn("assistant", ".")],
        [turn("user", "Empty-ish answer?"), turn("assistant", " ")],
        [turn("user", "What is 2+2?"), turn("assistant", "4")],
        [turn("system", "You are a helpful assistant."), turn("user", "Name a prime."), turn("assistant", "7")],
        [turn("system", "Answer in French."), turn("user", "Thank you?"), turn("assistant", "Merci beaucoup !")],
        [turn("user", "Translate 'cat' to Japanese."), turn("assistant", "猫 (ねこ, neko) 🐱")],
        [turn("user", "Écris une phrase avec des accents."), turn("assistant", "Où est la forêt ? À côté du château.")],
        [turn("user", "Emoji only please"), turn("assistant", "👍🏽🎉🚀✨")],
        [turn("user", "Русский язык?"), turn("assistant", "Да, я говорю по-русски.")],
        [turn("user", "Write code"), turn("assistant", "```python\ndef add(a, b):\n    return a + b\n```")],
        [turn("user", "  padded whitespace  "), turn("assistant", "\n\n  trimmed by the template  \n")],
        [turn("user", "First question"), turn("assistant", "First answer"), turn("user", "Second question"),
         turn("assistant", "Second answer")],
        [turn("system", "Be brief."), turn("user", "A"), turn("assistant", "B"), turn("user", "C"),
         turn("assistant", "D"), turn("user", "E"), turn("assistant", "F")],
        [turn("user", "Explain photosynthesis."), turn("assistant", long_text)],
        [turn("user", long_text), turn("assistant", "That is a long list of steps.")],
        [turn("user", "Is this safe: rm -rf /?"), turn("assistant", "No. It deletes every file on the system.")],
        [turn("user", "Quote: \"hello\" and backslash \\ and tab\t."), turn("assistant", "Noted: \"hello\" \\ \t")],
        [turn("user", "Numbers"), turn("assistant", "3.14159 2.71828 1.41421 1234567890")],
        [turn("user", "Tell me a story"), turn("assistant", "Once upon a time " * 40)],
        # Close to the limit (checked in the test: between 90% and 100% of TEST_MAX_TOKENS).
        [turn("user", "Count."), turn("assistant", " ".join(str(i) for i in range(1, 470)))],
    ]
