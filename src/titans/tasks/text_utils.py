"""Small text helpers shared by the benchmark generators: sentence splitting, token counting, lengths."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from titans.tokenizer import ByteTokenizer, Tokenizer

# A sentence ends with one or more of . ! ? , optionally followed by closing quotes or brackets,
# and then whitespace. Deliberately simple: abbreviations ("Mr. Smith") are split too, which is
# harmless for haystack/background text.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*\s+")
_WHITESPACE = re.compile(r"\s+")
_LENGTH_SPEC = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def default_tokenizer(tokenizer: Tokenizer | None) -> Tokenizer:
    """``tokenizer`` itself, or a :class:`~titans.tokenizer.ByteTokenizer` when it is ``None``."""
    return ByteTokenizer() if tokenizer is None else tokenizer


def count_tokens(tokenizer: Tokenizer, text: str) -> int:
    """Number of tokens of ``text`` in ``tokenizer``'s own tokens."""
    return len(tokenizer.encode(text))


def split_into_sentence_units(text: str) -> list[str]:
    """Split ``text`` into sentences that keep their trailing whitespace.

    ``"".join(split_into_sentence_units(text)) == text`` always holds, so inserting something between two
    units inserts it at a sentence boundary without touching the text itself.
    """
    units: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        units.append(text[start : match.end()])
        start = match.end()
    if start < len(text):
        units.append(text[start:])
    return units


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into stripped sentences, with every run of whitespace collapsed to one space."""
    normalized = _WHITESPACE.sub(" ", text).strip()
    return [unit.strip() for unit in split_into_sentence_units(normalized) if unit.strip()]


def parse_token_length(spec: int | str) -> int:
    """Parse a context length: ``4096``, ``"4096"``, ``"4K"`` (= 4096) or ``"1M"`` (= 1024²); ``"0K"`` is 0.

    Raises:
        ValueError: for anything else, or a negative length.
    """
    if isinstance(spec, bool):
        raise ValueError(f"not a token length: {spec!r}")
    if isinstance(spec, int):
        value = spec
    else:
        match = _LENGTH_SPEC.match(spec)
        if match is None:
            raise ValueError(f"not a token length: {spec!r} (expected e.g. 4096, '4K' or '1M')")
        number, suffix = float(match.group(1)), match.group(2).lower()
        scaled = number * {"": 1, "k": 1024, "m": 1024 * 1024}[suffix]
        if scaled != int(scaled):
            raise ValueError(f"not a whole number of tokens: {spec!r}")
        value = int(scaled)
    if value < 0:
        raise ValueError(f"token length must be non-negative, got {spec!r}")
    return value


def longest_fitting_word_prefix(text: str, budget: int, count: Callable[[str], int]) -> str:
    """The longest prefix of ``text`` that ends at a word boundary and has at most ``budget`` tokens.

    ``count`` counts the tokens of a string. Binary search over the number of words (token counts grow
    with the prefix length for every sensible tokenizer).
    """
    if budget <= 0:
        return ""
    word_ends = [m.end() for m in re.finditer(r"\S+", text)]
    low, high = 0, len(word_ends)  # invariant: a prefix of `low` words fits
    while low < high:
        middle = (low + high + 1) // 2
        if count(text[: word_ends[middle - 1]]) <= budget:
            low = middle
        else:
            high = middle - 1
    return text[: word_ends[low - 1]] if low > 0 else ""


class CycledUnits:
    """Text units (e.g. sentences with trailing whitespace) repeated forever, with token counts cached.

    ``unit(i)`` is ``units[i % len(units)]``; ``count(i)`` its token count, computed once per base unit.
    Tokens a tokenizer adds to every encoding (e.g. a BOS token: the count of ``encode("")``) are not
    counted, since a unit inside a longer text does not bring them along.
    """

    def __init__(self, units: Sequence[str], tokenizer: Tokenizer):
        if not units:
            raise ValueError("no text units to draw from (empty haystack/background)")
        self.units = units
        self.tokenizer = tokenizer
        self.special_tokens_per_encoding = count_tokens(tokenizer, "")
        self._counts: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.units)

    def unit(self, index: int) -> str:
        """The unit at ``index`` (wrapping around)."""
        return self.units[index % len(self.units)]

    def count(self, index: int) -> int:
        """Token count of :meth:`unit` ``(index)``."""
        base = index % len(self.units)
        counted = self._counts.get(base)
        if counted is None:
            raw = count_tokens(self.tokenizer, self.units[base]) - self.special_tokens_per_encoding
            counted = self._counts[base] = max(0, raw)
        return counted


class PromptRecord:
    """Methods shared by the prompt samples (S-NIAH, BABILong): dataclasses with ``prompt_ids``/``answer_ids``."""

    prompt_ids: list[int]

    @property
    def num_prompt_tokens(self) -> int:
        """``len(prompt_ids)``."""
        return len(self.prompt_ids)

    def to_dict(self, include_token_ids: bool = True) -> dict[str, Any]:
        """A JSON-ready dict (``prompt_ids``/``answer_ids`` left out when ``include_token_ids`` is false)."""
        record = asdict(self)  # type: ignore[call-overload]
        record["num_prompt_tokens"] = self.num_prompt_tokens
        if not include_token_ids:
            del record["prompt_ids"], record["answer_ids"]
        return dict(record)
