"""Held-out documents for long-context evaluation, one token array per document.

The evaluator runs the model through each document piece by piece, carrying the memory state from one piece to
the next, so it needs whole documents rather than packed rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from titans.data.tokenized import TokenizedSplit


def select_documents(data: TokenizedSplit, n_longest: int | None = None, min_len: int = 2) -> np.ndarray:
    """Indices of documents with at least ``min_len`` tokens: all in corpus order, or the ``n_longest``.

    The longest come first; equal lengths keep corpus order.
    """
    lengths = data.document_lengths()
    eligible = np.flatnonzero(lengths >= min_len)
    if n_longest is None:
        return eligible
    if n_longest < 1:
        raise ValueError(f"n_longest must be >= 1, got {n_longest}")
    by_length = eligible[np.argsort(-lengths[eligible], kind="stable")]
    return by_length[:n_longest]


def iter_eval_documents(
    data: TokenizedSplit, n_longest: int | None = None, max_len: int | None = None, min_len: int = 2
) -> Iterator[np.ndarray]:
    """Token arrays (``int64``) of held-out documents, each truncated to its first ``max_len`` tokens.

    ``n_longest`` keeps only the longest documents (longest first); documents shorter than ``min_len``
    tokens are skipped (a document needs 2 tokens for one next-token prediction).
    """
    if max_len is not None and max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    for index in select_documents(data, n_longest, min_len):
        tokens = data.document(int(index))
        if max_len is not None:
            tokens = tokens[:max_len]
        yield np.asarray(tokens, dtype=np.int64)
