"""Tokenizers: bytes by default (no downloads), a Hugging Face ``tokenizer.json`` optionally."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Tokenizer(Protocol):
    """What the rest of the project needs from a tokenizer."""

    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: ids 0..255, so bits per token are bits per byte."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        bad = [i for i in ids if not 0 <= int(i) < 256]
        if bad:
            raise ValueError(f"ByteTokenizer.decode: ids must be in [0, 256); got {bad[:5]}")
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer loaded from a local ``tokenizer.json``."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            from tokenizers import Tokenizer as _HFTokenizer
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("reading a tokenizer.json needs the 'tokenizers' package: pip install tokenizers") from e
        self._tok = _HFTokenizer.from_file(str(path))
        self.vocab_size = int(self._tok.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode([int(i) for i in ids]))


def load_tokenizer(spec: str | None) -> Tokenizer:
    """``None`` or ``"bytes"`` → :class:`ByteTokenizer`; a path to ``tokenizer.json`` → :class:`HFTokenizer`."""
    if spec is None or spec == "bytes":
        return ByteTokenizer()
    return HFTokenizer(spec)
