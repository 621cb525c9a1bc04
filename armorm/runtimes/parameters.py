"""A model's string parameters from its config.pbtxt, read strictly: a bad value names the model and the key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Parameters:
    owner: str  # the model, for messages
    values: Mapping[str, str] = field(default_factory=dict)

    def get(self, key: str, default: str) -> str:
        return self.values.get(key, default)

    def integer(self, key: str, default: int) -> int:
        value = self.get(key, str(default))
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{self.owner}: parameter {key}={value!r} must be an integer") from None

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, str(default).lower()).strip().lower()
        if value not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{self.owner}: parameter {key}={value!r} must be true or false")
        return value in ("true", "1", "yes")
