"""Data pipeline: read a corpus, tokenize and cache it, pack it into rows, serve deterministic batches.

Typical use by a training script::

    from titans.data import PackedDataset, TrainBatches, load_split, sample_corpus_path

    train = load_split(path or sample_corpus_path(), "train", tokenizer, cache_dir)
    batches = TrainBatches(PackedDataset(train, seq_len), global_batch_size, seed, rank, world_size)
    input_ids, labels = batches.batch(step)

Modules: :mod:`~titans.data.readers` (formats and splits), :mod:`~titans.data.tokenized` (tokenizing and the
disk cache), :mod:`~titans.data.packing` (rows that never cross documents), :mod:`~titans.data.batches`
(training/evaluation batches) and :mod:`~titans.data.evaluation` (whole held-out documents).
"""

from titans.data.batches import Batch, TrainBatches, epoch_permutation, iter_eval_batches
from titans.data.evaluation import iter_eval_documents, select_documents
from titans.data.packing import IGNORE_INDEX, PackedDataset, RowLayout, pack_documents
from titans.data.readers import (
    CORPUS_FORMATS,
    SPLITS,
    CorpusFormat,
    DataError,
    Split,
    detect_format,
    hash_split,
    iter_documents,
    iter_labelled_documents,
    normalize_split,
    split_cut_points,
)
from titans.data.tokenized import (
    TokenizedSplit,
    default_cache_dir,
    load_split,
    token_dtype,
    tokenize_documents,
    tokenizer_fingerprint,
)
from titans.sample_data import sample_corpus_path

__all__ = [
    "CORPUS_FORMATS",
    "IGNORE_INDEX",
    "SPLITS",
    "Batch",
    "CorpusFormat",
    "DataError",
    "PackedDataset",
    "RowLayout",
    "Split",
    "TokenizedSplit",
    "TrainBatches",
    "default_cache_dir",
    "detect_format",
    "epoch_permutation",
    "hash_split",
    "iter_documents",
    "iter_eval_batches",
    "iter_eval_documents",
    "iter_labelled_documents",
    "load_split",
    "normalize_split",
    "pack_documents",
    "sample_corpus_path",
    "select_documents",
    "split_cut_points",
    "token_dtype",
    "tokenize_documents",
    "tokenizer_fingerprint",
]
