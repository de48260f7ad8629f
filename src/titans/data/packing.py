"""Pack documents into fixed-length training rows that never cross a document boundary.

A row holds ``seq_len + 1`` consecutive tokens of one document: the inputs are its first ``seq_len`` tokens
and the labels its last ``seq_len`` (the next token at every position). The model's memory starts fresh on
every row, so keeping rows inside a document means the memory is reset exactly at document boundaries.

Consecutive rows of a document overlap by one token, so every token after the first is a label exactly once.
The tail of a document is handled without padding whenever possible:

* The **last row of a document of at least** ``seq_len + 1`` **tokens is right-aligned** to the document end.
  It then overlaps the previous row by more than one token; the labels of the overlap are set to
  :data:`IGNORE_INDEX` so no token is counted twice, while the inputs keep the real preceding text as context
  (which is better than padding: the tail predictions see a full row of context).
* **A document shorter than** ``seq_len + 1`` **tokens** becomes a single right-padded row: inputs past its
  end are ``pad_id`` and their labels :data:`IGNORE_INDEX`. Padding sits after all real tokens, so a causal
  model's predictions for the real tokens are unaffected by it.
* Documents of fewer than 2 tokens have nothing to predict and produce no row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from titans.data.tokenized import TokenizedSplit

#: Label value that the loss ignores (PyTorch's ``cross_entropy`` default ``ignore_index``).
IGNORE_INDEX = -100


@dataclass(frozen=True)
class RowLayout:
    """Where each packed row lies in a split's token array.

    Row ``i`` covers ``tokens[starts[i] : starts[i] + lengths[i]]`` (``lengths[i] <= seq_len + 1``); its
    labels at positions before ``label_starts[i]`` are ignored (they were predicted by the previous row).
    """

    starts: np.ndarray
    lengths: np.ndarray
    label_starts: np.ndarray
    seq_len: int

    def __len__(self) -> int:
        return len(self.starts)


def _rows_per_document(doc_lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """``ceil((length - 1) / seq_len)`` rows per document; 0 for documents of fewer than 2 tokens."""
    predictions = np.maximum(doc_lengths - 1, 0)
    return (predictions + seq_len - 1) // seq_len


def pack_documents(doc_offsets: np.ndarray, seq_len: int) -> RowLayout:
    """Lay out rows of ``seq_len + 1`` tokens over documents given by their offsets (see the module doc)."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    doc_offsets = np.asarray(doc_offsets, dtype=np.int64)
    doc_lengths = np.diff(doc_offsets)
    rows_per_doc = _rows_per_document(doc_lengths, seq_len)
    doc_of_row = np.repeat(np.arange(len(doc_lengths)), rows_per_doc)
    first_row_of_doc = np.cumsum(rows_per_doc) - rows_per_doc
    row_in_doc = np.arange(len(doc_of_row), dtype=np.int64) - first_row_of_doc[doc_of_row]
    row_doc_length = doc_lengths[doc_of_row]

    unaligned_start = row_in_doc * seq_len
    is_last = row_in_doc == rows_per_doc[doc_of_row] - 1
    right_aligned_start = np.maximum(row_doc_length - (seq_len + 1), 0)
    start_in_doc = np.where(is_last, np.minimum(unaligned_start, right_aligned_start), unaligned_start)
    return RowLayout(
        starts=doc_offsets[doc_of_row] + start_in_doc,
        lengths=np.minimum(row_doc_length - start_in_doc, seq_len + 1),
        label_starts=unaligned_start - start_in_doc,
        seq_len=seq_len,
    )


class PackedDataset:
    """A tokenized split cut into rows of ``seq_len`` inputs and ``seq_len`` next-token labels."""

    def __init__(self, data: TokenizedSplit, seq_len: int, pad_id: int = 0):
        self.data = data
        self.seq_len = seq_len
        self.pad_id = pad_id
        self.layout = pack_documents(data.doc_offsets, seq_len)
        if len(self.layout) == 0:
            raise ValueError(f"{data.source}: the {data.split!r} split has no document of 2 or more tokens to train on")

    def __len__(self) -> int:
        return len(self.layout)

    def rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, labels)`` of the given rows as ``int64`` arrays of shape ``(len(indices), seq_len)``."""
        indices = np.asarray(indices, dtype=np.int64)
        starts = self.layout.starts[indices]
        lengths = self.layout.lengths[indices]
        label_starts = self.layout.label_starts[indices]
        positions = np.arange(self.seq_len + 1, dtype=np.int64)
        in_document = positions[None, :] < lengths[:, None]
        token_index = np.where(in_document, starts[:, None] + positions[None, :], starts[:, None])
        window = np.asarray(self.data.tokens[token_index], dtype=np.int64)
        window[~in_document] = self.pad_id
        inputs = window[:, :-1]
        labels = window[:, 1:].copy()
        counted = in_document[:, 1:] & (positions[None, :-1] >= label_starts[:, None])
        labels[~counted] = IGNORE_INDEX
        return np.ascontiguousarray(inputs), labels

    def row_document(self, index: int) -> int:
        """Index of the document that row ``index`` belongs to."""
        return int(np.searchsorted(self.data.doc_offsets, self.layout.starts[index], side="right") - 1)
