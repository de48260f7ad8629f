"""Tests for titans.data: readers, splits, the token cache, packing, batches and the bundled sample."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import titans.data.tokenized as tokenized_module
from titans.data import (
    IGNORE_INDEX,
    DataError,
    PackedDataset,
    TokenizedSplit,
    TrainBatches,
    detect_format,
    hash_split,
    iter_documents,
    iter_eval_batches,
    iter_eval_documents,
    iter_labelled_documents,
    load_split,
    normalize_split,
    pack_documents,
    sample_corpus_path,
    split_cut_points,
    token_dtype,
)
from titans.tokenizer import ByteTokenizer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GUTENBERG = SHARED_DATA / "gutenberg_pg19like.jsonl.xz"
ENWIK8_PREFIX = SHARED_DATA / "enwik8_prefix_4154064.xz"

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    ".gz": gzip.compress,
    ".xz": lzma.compress,
    ".bz2": bz2.compress,
}


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path``, compressed according to its suffix."""
    compress = COMPRESSORS.get(path.suffix)
    path.write_bytes(compress(data) if compress else data)
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    lines = "".join(json.dumps(r) + "\n" for r in records)
    return write_bytes(path, lines.encode("utf-8"))


def make_split(doc_lengths: list[int], vocab: int = 256, seed: int = 0) -> TokenizedSplit:
    """A synthetic tokenized split with documents of the given lengths."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(doc_lengths)]).astype(np.int64)
    tokens = rng.integers(0, vocab, size=int(offsets[-1])).astype(token_dtype(vocab))
    return TokenizedSplit(tokens=tokens, doc_offsets=offsets, split="train", source="synthetic")


BOOKS = [
    {"text": "Call me Ishmael. " * 20, "split": "train"},
    {"text": "It was the best of times. " * 15, "split": "train"},
    {"text": "Happy families are all alike. " * 10, "split": "validation"},
    {"text": "In a hole in the ground. " * 12, "split": "test"},
]


# ----------------------------------------------------------------------------------------------- readers


def test_detect_format(tmp_path: Path) -> None:
    assert detect_format(tmp_path) == "folder"
    assert detect_format(tmp_path / "enwik8") == "enwik8"
    assert detect_format(tmp_path / "enwik8_prefix_4154064.xz") == "enwik8"
    assert detect_format(tmp_path / "books.jsonl") == "jsonl"
    assert detect_format(tmp_path / "books.jsonl.xz") == "jsonl"
    assert detect_format(tmp_path / "books.ndjson.gz") == "jsonl"
    assert detect_format(tmp_path / "book.txt") == "text"
    assert detect_format(tmp_path / "book.txt.gz") == "text"


def test_split_names_and_aliases() -> None:
    assert [normalize_split(s) for s in ("train", "validation", "VAL", "dev", "test")] == [
        "train",
        "valid",
        "valid",
        "valid",
        "test",
    ]
    with pytest.raises(DataError, match="unknown split 'holdout'"):
        normalize_split("holdout")


def test_hash_split_is_deterministic_and_90_5_5() -> None:
    splits = [hash_split(f"document-{i}") for i in range(20_000)]
    assert splits == [hash_split(f"document-{i}") for i in range(20_000)]
    fractions = {s: splits.count(s) / len(splits) for s in ("train", "valid", "test")}
    assert fractions["train"] == pytest.approx(0.90, abs=0.01)
    assert fractions["valid"] == pytest.approx(0.05, abs=0.01)
    assert fractions["test"] == pytest.approx(0.05, abs=0.01)
    assert hash_split("document-0") == "train"  # pinned: the assignment must never change between versions


@pytest.mark.parametrize("suffix", ["", ".gz", ".xz", ".bz2"])
def test_text_file_is_one_document_cut_90_5_5(tmp_path: Path, suffix: str) -> None:
    text = "".join(f"line {i} é\n" for i in range(500))
    path = write_bytes(tmp_path / f"book.txt{suffix}", text.encode("utf-8"))
    pieces = {split: list(iter_documents(path, split)) for split in ("train", "valid", "test")}
    assert all(len(docs) == 1 for docs in pieces.values())
    train_end, valid_end = split_cut_points(len(text))
    assert pieces["train"][0] == text[:train_end]
    assert pieces["valid"][0] == text[train_end:valid_end]
    assert pieces["train"][0] + pieces["valid"][0] + pieces["test"][0] == text


def test_folder_of_txt_files(tmp_path: Path) -> None:
    names = [f"book{i:02d}.txt" for i in range(30)] + ["more/extra.txt"]
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(f"contents of {name}\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored")
    labelled = list(iter_labelled_documents(tmp_path))
    assert [text for _, text in labelled] == [f"contents of {n}\n" for n in sorted(names)]
    assert [split for split, _ in labelled] == [hash_split(n) for n in sorted(names)]
    train = list(iter_documents(tmp_path, "train"))
    assert len(train) == sum(hash_split(n) == "train" for n in names)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.xz"])
def test_jsonl_with_split_field(tmp_path: Path, suffix: str) -> None:
    path = write_jsonl(tmp_path / f"books{suffix}", [*BOOKS, {"text": "", "split": "train"}])
    assert list(iter_documents(path, "train")) == [BOOKS[0]["text"], BOOKS[1]["text"]]
    assert list(iter_documents(path, "valid")) == [BOOKS[2]["text"]]
    assert list(iter_documents(path, "validation")) == [BOOKS[2]["text"]]
    assert list(iter_documents(path, "test")) == [BOOKS[3]["text"]]


def test_jsonl_without_split_field_uses_index_hash(tmp_path: Path) -> None:
    records = [{"text": f"document number {i}"} for i in range(200)]
    path = write_jsonl(tmp_path / "plain.jsonl", records)
    labelled = list(iter_labelled_documents(path))
    assert [split for split, _ in labelled] == [hash_split(f"document-{i}") for i in range(200)]
    assert {split for split, _ in labelled} == {"train", "valid", "test"}


def test_enwik8_layout_cuts_bytes_exactly(tmp_path: Path) -> None:
    data = ("<mediawiki>" + "ünïcödé text " * 3000 + "</mediawiki>").encode("utf-8")
    path = write_bytes(tmp_path / "enwik8_small.xz", data)
    train_end, valid_end = split_cut_points(len(data))
    for split, expected in [
        ("train", data[:train_end]),
        ("valid", data[train_end:valid_end]),
        ("test", data[valid_end:]),
    ]:
        loaded = load_split(path, split, "bytes", cache_dir=tmp_path / "cache")
        assert loaded.num_documents == 1
        assert loaded.tokens.tobytes() == expected  # exact even where a cut splits a UTF-8 character


def test_enwik8_standard_cut_points() -> None:
    assert split_cut_points(100_000_000) == (90_000_000, 95_000_000)


# ----------------------------------------------------------------------------------------------- errors


def test_missing_path_error_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_corpus.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(f"corpus not found: {missing}")):
        load_split(missing, "train", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        list(iter_documents(missing, "train"))


@pytest.mark.parametrize("name", ["empty.txt", "empty.jsonl", "enwik8_empty"])
def test_empty_file_error_names_it(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"" if name != "empty.jsonl" else b"\n\n")
    with pytest.raises(DataError) as info:
        load_split(path, "train", cache_dir=tmp_path / "cache")
    assert str(path) in str(info.value)
    assert "empty" in str(info.value) or "no JSONL documents" in str(info.value)


def test_empty_folder_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"holds no \.txt files"):
        list(iter_documents(tmp_path, "train"))


@pytest.mark.parametrize("name", ["books.jsonl.xz", "books.jsonl.gz", "enwik8.xz"])
def test_corrupt_compressed_file_error_names_it(tmp_path: Path, name: str) -> None:
    data = write_bytes(tmp_path / name, json.dumps(BOOKS[0]).encode() * 50).read_bytes()
    path = tmp_path / f"truncated_{name}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=re.escape(f"{path}: cannot read or decompress the file")):
        load_split(path, "train", cache_dir=tmp_path / "cache")


def test_split_without_documents_names_path_and_split(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "only_train.jsonl", [BOOKS[0], BOOKS[1]])
    with pytest.raises(DataError, match=r"only_train\.jsonl: no documents in the 'test' split"):
        list(iter_documents(path, "test"))
    with pytest.raises(DataError, match=r"only_train\.jsonl: no documents in the 'valid' split"):
        load_split(path, "validation", cache_dir=tmp_path / "cache")
    # the second call reads the cache and still reports the missing split
    with pytest.raises(DataError, match=r"no documents in the 'valid' split"):
        load_split(path, "valid", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("{not json", "line 3: not valid JSON"),
        ('{"title": "x"}', "line 3: no 'text' field (fields: title)"),
        ('{"text": 5}', "line 3: the 'text' field is int, not a string"),
        ("[1, 2]", "line 3: expected a JSON object, got list"),
        ('{"text": "x", "split": "holdout"}', "line 3: unknown split 'holdout'"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path: Path, bad_line: str, expected: str) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(BOOKS[0]) + "\n\n" + bad_line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_split(path, "train", cache_dir=tmp_path / "cache")
    assert f"{path}, {expected}" in str(info.value)


# ----------------------------------------------------------------------------------------------- cache


def test_cache_is_reused_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_jsonl(tmp_path / "books.jsonl", BOOKS)
    cache = tmp_path / "cache"
    first = load_split(path, "train", ByteTokenizer(), cache_dir=cache)
    assert first.tokens.dtype == np.uint8
    assert first.tokens.tobytes() == (BOOKS[0]["text"] + BOOKS[1]["text"]).encode()
    assert list(first.doc_offsets) == [0, len(BOOKS[0]["text"]), len(BOOKS[0]["text"] + BOOKS[1]["text"])]
    assert len(list(cache.glob("*/meta.json"))) == 1

    def no_reading(*args: object, **kwargs: object) -> Iterator[tuple[str, str]]:
        raise AssertionError("the corpus was read again instead of the cache")

    with monkeypatch.context() as patch:
        patch.setattr(tokenized_module, "iter_labelled_documents", no_reading)
        again = load_split(path, "train", "bytes", cache_dir=cache)
        test_split = load_split(path, "test", None, cache_dir=cache)  # all splits were cached in one pass
    np.testing.assert_array_equal(again.tokens, first.tokens)
    assert test_split.tokens.tobytes() == BOOKS[3]["text"].encode()

    write_jsonl(path, [*BOOKS, {"text": "one more book", "split": "train"}])
    os.utime(path, ns=(1, 1))  # a new mtime (and size) changes the key
    assert load_split(path, "train", cache_dir=cache).num_documents == 3
    assert len(list(cache.glob("*/meta.json"))) == 2


class WordTokenizer:
    """A toy tokenizer with a large vocabulary: one id per space-separated word (hash-based)."""

    vocab_size = 60_000

    def encode(self, text: str) -> list[int]:
        return [sum(w.encode()) * 31 % self.vocab_size for w in text.split(" ")]

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError


def test_other_tokenizers_get_their_own_cache_and_dtype(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "books.jsonl", BOOKS)
    cache = tmp_path / "cache"
    words = load_split(path, "train", WordTokenizer(), cache_dir=cache)
    load_split(path, "train", "bytes", cache_dir=cache)
    assert words.tokens.dtype == np.uint16
    assert words.num_tokens == len(BOOKS[0]["text"].split(" ")) + len(BOOKS[1]["text"].split(" "))
    assert len(list(cache.glob("*/meta.json"))) == 2


def test_token_dtype() -> None:
    assert token_dtype(256) == np.uint8
    assert token_dtype(50_257) == np.uint16
    assert token_dtype(100_000) == np.int32


# ----------------------------------------------------------------------------------------------- packing


def assert_rows_stay_in_documents(dataset: PackedDataset) -> None:
    layout, offsets = dataset.layout, dataset.data.doc_offsets
    doc_of_start = np.searchsorted(offsets, layout.starts, side="right") - 1
    doc_of_last = np.searchsorted(offsets, layout.starts + layout.lengths - 1, side="right") - 1
    np.testing.assert_array_equal(doc_of_start, doc_of_last)


@pytest.mark.parametrize("seq_len", [1, 4, 7, 16])
def test_packing_never_crosses_documents_and_counts_every_token_once(seq_len: int) -> None:
    lengths = [1, 2, 5, 8, 9, 16, 17, 18, 33, 100, 3]
    data = make_split(lengths)
    dataset = PackedDataset(data, seq_len)
    assert_rows_stay_in_documents(dataset)
    inputs, labels = dataset.rows(np.arange(len(dataset)))
    assert inputs.shape == labels.shape == (len(dataset), seq_len)
    # every token except the first of each document is a label exactly once
    assert int((labels != IGNORE_INDEX).sum()) == sum(max(n - 1, 0) for n in lengths)
    counted = np.zeros(data.num_tokens, dtype=int)
    for row in range(len(dataset)):
        start, skip = dataset.layout.starts[row], dataset.layout.label_starts[row]
        valid = np.flatnonzero(labels[row] != IGNORE_INDEX)
        assert valid.min() >= skip
        counted[start + valid + 1] += 1
        # labels are the inputs shifted by one, and both are the document's tokens
        np.testing.assert_array_equal(labels[row, valid], data.tokens[start + valid + 1])
        np.testing.assert_array_equal(inputs[row, valid], data.tokens[start + valid])
    first_tokens = data.doc_offsets[:-1]
    expected = np.ones(data.num_tokens, dtype=int)
    expected[first_tokens[first_tokens < data.num_tokens]] = 0
    np.testing.assert_array_equal(counted, expected)


def test_full_rows_have_labels_equal_to_shifted_inputs() -> None:
    dataset = PackedDataset(make_split([200, 300]), 16)
    inputs, labels = dataset.rows(np.arange(len(dataset)))
    full = (labels != IGNORE_INDEX).all(axis=1)
    assert full.sum() >= len(dataset) - 2
    np.testing.assert_array_equal(labels[full, :-1], inputs[full, 1:])


def test_short_documents_are_right_padded_and_tails_right_aligned() -> None:
    layout = pack_documents(np.array([0, 5, 5 + 20]), seq_len=8)
    # doc 0 (5 tokens): one padded row; doc 1 (20 tokens): rows at 5, 13 and a right-aligned tail at 16
    assert list(layout.starts) == [0, 5, 13, 16]
    assert list(layout.lengths) == [5, 9, 9, 9]
    assert list(layout.label_starts) == [0, 0, 0, 5]
    dataset = PackedDataset(make_split([5, 20]), 8, pad_id=0)
    inputs, labels = dataset.rows(np.array([0, 3]))
    assert list(labels[0, 4:]) == [IGNORE_INDEX] * 4 and (labels[0, :4] != IGNORE_INDEX).all()
    assert list(inputs[0, 5:]) == [0, 0, 0]
    assert (labels[1, :5] == IGNORE_INDEX).all() and (labels[1, 5:] != IGNORE_INDEX).all()


def test_packing_rejects_a_split_without_trainable_documents() -> None:
    with pytest.raises(ValueError, match="no document of 2 or more tokens"):
        PackedDataset(make_split([1, 1]), 4)


# ----------------------------------------------------------------------------------------------- batches


@pytest.fixture(scope="module")
def packed() -> PackedDataset:
    return PackedDataset(make_split([37, 300, 64, 129, 500, 12, 90]), 16)


def test_batches_are_a_pure_function_of_seed_and_step(packed: PackedDataset) -> None:
    batches = TrainBatches(packed, global_batch_size=8, seed=3)
    later = batches.batch(1000)
    early = batches.batch(5)
    fresh = TrainBatches(packed, global_batch_size=8, seed=3)
    for step, batch in [(5, early), (1000, later)]:
        again = fresh.batch(step)
        assert torch.equal(again.input_ids, batch.input_ids) and torch.equal(again.labels, batch.labels)
    assert early.input_ids.dtype == torch.long and early.input_ids.shape == (8, 16)
    assert not torch.equal(TrainBatches(packed, 8, seed=4).batch(5).input_ids, early.input_ids)
    assert not torch.equal(batches.batch(6).input_ids, early.input_ids)
    step, resumed = next(batches.iterate(start_step=1000))
    assert step == 1000 and torch.equal(resumed.labels, later.labels)


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_shards_make_up_the_single_process_batch(packed: PackedDataset, world_size: int) -> None:
    single = TrainBatches(packed, global_batch_size=8, seed=11)
    ranks = [TrainBatches(packed, 8, seed=11, rank=r, world_size=world_size) for r in range(world_size)]
    for step in (0, 7, 123):
        expected = single.batch(step)
        merged_inputs = torch.empty_like(expected.input_ids)
        merged_labels = torch.empty_like(expected.labels)
        for rank, batches in enumerate(ranks):
            shard = batches.batch(step)
            assert shard.input_ids.shape == (8 // world_size, 16)
            merged_inputs[rank::world_size] = shard.input_ids
            merged_labels[rank::world_size] = shard.labels
        assert torch.equal(merged_inputs, expected.input_ids)
        assert torch.equal(merged_labels, expected.labels)


def test_one_epoch_visits_every_row_once(packed: PackedDataset) -> None:
    batches = TrainBatches(packed, global_batch_size=len(packed), seed=0)
    assert sorted(batches.row_indices(0).tolist()) == list(range(len(packed)))
    assert sorted(batches.row_indices(1).tolist()) == list(range(len(packed)))
    assert not np.array_equal(batches.row_indices(0), batches.row_indices(1))  # reshuffled each epoch


def test_batch_arguments_are_checked(packed: PackedDataset) -> None:
    with pytest.raises(ValueError, match="not divisible by world_size 3"):
        TrainBatches(packed, 8, world_size=3, rank=0)
    with pytest.raises(ValueError, match="rank < world_size"):
        TrainBatches(packed, 8, world_size=2, rank=2)


def test_eval_batches_cover_rows_in_order(packed: PackedDataset) -> None:
    batches = list(iter_eval_batches(packed, batch_size=5))
    assert sum(len(b.input_ids) for b in batches) == len(packed)
    inputs, _ = packed.rows(np.arange(5))
    assert torch.equal(batches[0].input_ids, torch.from_numpy(inputs))
    few = list(iter_eval_batches(packed, batch_size=4, max_batches=2))
    assert len(few) == 2 and all(len(b.input_ids) == 4 for b in few)


# ----------------------------------------------------------------------------------------------- evaluation


def test_eval_documents_longest_first_and_truncated() -> None:
    data = make_split([10, 50, 1, 30, 50])
    docs = list(iter_eval_documents(data, n_longest=3, max_len=40))
    assert [len(d) for d in docs] == [40, 40, 30]
    np.testing.assert_array_equal(docs[0], data.document(1)[:40])  # ties keep corpus order
    np.testing.assert_array_equal(docs[1], data.document(4)[:40])
    assert docs[0].dtype == np.int64
    assert [len(d) for d in iter_eval_documents(data)] == [10, 50, 30, 50]  # 1-token document skipped


# ----------------------------------------------------------------------------------------------- sample


def test_bundled_sample_corpus(tmp_path: Path) -> None:
    path = sample_corpus_path()
    assert path.is_file() and path.name.endswith(".jsonl.gz")
    splits = [split for split, _ in iter_labelled_documents(path)]
    assert splits.count("train") == 4 and splits.count("valid") == 1 and splits.count("test") == 1
    texts = [text for _, text in iter_labelled_documents(path)]
    assert 1_000_000 < sum(len(t) for t in texts) < 2_000_000
    assert not any("gutenberg" in t.lower() for t in texts)
    train = load_split(path, "train", cache_dir=tmp_path)
    batch = TrainBatches(PackedDataset(train, 64), 4, seed=0).batch(0)
    assert batch.input_ids.shape == (4, 64)


# ----------------------------------------------------------------------------------------------- shared data


@pytest.mark.skipif(not GUTENBERG.is_file(), reason="shared Gutenberg corpus not present")
def test_gutenberg_corpus_streams_the_first_book() -> None:
    documents = iter_documents(GUTENBERG, "train")
    first = next(documents)
    documents.close()  # stop early: only the first line is decompressed
    assert len(first) > 10_000 and "Project Gutenberg" not in first


@pytest.mark.skipif(not ENWIK8_PREFIX.is_file(), reason="shared enwik8 prefix not present")
def test_enwik8_prefix_split_proportionally(tmp_path: Path) -> None:
    total = 4_154_064
    train_end, valid_end = split_cut_points(total)
    train = load_split(ENWIK8_PREFIX, "train", cache_dir=tmp_path)
    valid = load_split(ENWIK8_PREFIX, "valid", cache_dir=tmp_path)
    test = load_split(ENWIK8_PREFIX, "test", cache_dir=tmp_path)
    assert (train.num_tokens, valid.num_tokens, test.num_tokens) == (
        train_end,
        valid_end - train_end,
        total - valid_end,
    )
    assert train.tokens[:10].tobytes() == b"<mediawiki"
