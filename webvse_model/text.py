"""Caption tokens and the vocabulary of the sentence encoder.

The tokenizer is deliberately simple and deterministic (lower-case, words and
numbers, apostrophes kept inside words) so that a vocabulary built today encodes the
same way in a year. Vocabularies are saved as JSON, never pickle: a vocabulary file
from a stranger must not be able to run code.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from storage.atomic import atomic_write_text
from storage.errors import InputError, MissingInputError

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, START, END, UNK)
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens; punctuation, emoji and other symbols are dropped."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class Vocabulary:
    """Token <-> id mapping; ids 0..3 are ``<pad> <start> <end> <unk>``."""

    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.tokens[: len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
            raise InputError(f"a vocabulary must start with {SPECIAL_TOKENS}")
        if len(set(self.tokens)) != len(self.tokens):
            raise InputError("a vocabulary must not repeat a token")
        object.__setattr__(self, "_index", {token: i for i, token in enumerate(self.tokens)})

    @classmethod
    def build(cls, tokenized: Iterable[Sequence[str]], min_count: int = 4) -> Vocabulary:
        """Keep tokens seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        if min_count < 1:
            raise InputError(f"min_count must be >= 1, got {min_count}")
        counts = Counter(token for tokens in tokenized for token in tokens)
        kept = sorted((t for t, c in counts.items() if c >= min_count and t not in SPECIAL_TOKENS), key=lambda t: (-counts[t], t))
        return cls(SPECIAL_TOKENS + tuple(kept))

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index  # type: ignore[attr-defined]

    def id(self, token: str) -> int:
        return self._index.get(token, self._index[UNK])  # type: ignore[attr-defined]

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """``<start> tokens <end>`` as ids; unknown tokens become ``<unk>``."""
        return [self.id(START), *(self.id(t) for t in tokens), self.id(END)]

    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.tokens[i] for i in ids if self.tokens[i] not in (PAD, START, END)]

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps({"format": "webvse-vocab-1", "tokens": list(self.tokens)}, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        source = Path(path)
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
            return cls(tuple(data["tokens"]))
        except FileNotFoundError as exc:
            raise MissingInputError(f"vocabulary file {source} does not exist") from exc
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InputError(f"vocabulary file {source} is not a webvse vocabulary: {exc}") from exc
