"""The run's text: its tokenizer, its tokenized splits and their packed rows, with clean errors."""

from __future__ import annotations

from titans.config_io import ConfigError
from titans.data import DataError, PackedDataset, TokenizedSplit, load_split
from titans.tokenizer import Tokenizer, load_tokenizer
from titans.training.config import RunConfig, corpus_path


def run_tokenizer(config: RunConfig) -> Tokenizer:
    """The tokenizer named by ``data.tokenizer``; its vocabulary must fit ``model.vocab_size``."""
    try:
        tokenizer = load_tokenizer(config.data.tokenizer)
    except ImportError as e:
        raise ConfigError(f"config key 'data.tokenizer': {e}") from e
    if tokenizer.vocab_size > config.model.vocab_size:
        raise ConfigError(
            f"config key 'model.vocab_size' is {config.model.vocab_size}, smaller than the tokenizer's vocabulary "
            f"({tokenizer.vocab_size}) from data.tokenizer={config.data.tokenizer!r}"
        )
    return tokenizer


def tokenized_split(config: RunConfig, split: str, tokenizer: Tokenizer | None = None) -> TokenizedSplit:
    """One split of the run's corpus, tokenized (from the cache when possible).

    Raises :class:`FileNotFoundError` for a missing corpus and :class:`DataError` for an empty or unreadable
    one (the message names the file, and the line for JSONL).
    """
    return load_split(
        corpus_path(config.data),
        split,
        tokenizer or run_tokenizer(config),
        config.data.cache_dir,
    )


def packed_rows(data: TokenizedSplit, seq_len: int) -> PackedDataset:
    """``data`` cut into rows of ``seq_len`` tokens; :class:`DataError` when no document has 2 tokens."""
    try:
        return PackedDataset(data, seq_len)
    except ValueError as e:
        raise DataError(str(e)) from e
