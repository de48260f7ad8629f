"""Tokenize a corpus once into flat numpy arrays (one per split) and cache them on disk.

A split is stored as one 1-D token array (``uint8`` for vocabularies up to 256, ``uint16`` up to 65,536,
``int32`` beyond) plus ``int64`` document offsets: document ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``.

All three splits are built in a single pass over the source and written to
``<cache_dir>/<key>/{train,valid,test}.{tokens,offsets}.npy``, where ``key`` hashes the source's absolute
path, size and modification time (every file's, for a folder), the corpus format and the tokenizer. Later
loads memory-map the arrays, so opening a 100 MB corpus again takes milliseconds. Files are written under
temporary names and renamed, and ``meta.json`` is written last, so concurrent ranks building the same cache
never read a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from titans.data.readers import (
    SPLITS,
    CorpusFormat,
    DataError,
    Split,
    check_exists,
    detect_format,
    iter_labelled_documents,
    normalize_split,
)
from titans.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer

CACHE_FORMAT_VERSION = 1
_CACHE_ENV_VAR = "TITANS_CACHE_DIR"
_META_FILE = "meta.json"
_FINGERPRINT_PROBE = "The quick brown fox jumps over the lazy dog. 0123456789 ÄÖÜ ß €"


@dataclass(frozen=True)
class TokenizedSplit:
    """One split of a corpus as a flat token array with document offsets."""

    tokens: np.ndarray
    doc_offsets: np.ndarray
    split: Split
    source: str

    @property
    def num_documents(self) -> int:
        """How many documents the split holds."""
        return len(self.doc_offsets) - 1

    @property
    def num_tokens(self) -> int:
        """How many tokens the split holds, over all documents."""
        return int(self.doc_offsets[-1])

    def document_lengths(self) -> np.ndarray:
        """Token count of every document, as ``int64``."""
        return np.diff(self.doc_offsets)

    def document(self, index: int) -> np.ndarray:
        """The tokens of document ``index`` (a view into :attr:`tokens`)."""
        return self.tokens[self.doc_offsets[index] : self.doc_offsets[index + 1]]


def default_cache_dir() -> Path:
    """``$TITANS_CACHE_DIR`` if set, else ``~/.cache/titans``."""
    return Path(os.environ.get(_CACHE_ENV_VAR) or Path.home() / ".cache" / "titans").expanduser()


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned/signed dtype that holds every id of a vocabulary of ``vocab_size``."""
    if vocab_size <= 2**8:
        return np.dtype(np.uint8)
    if vocab_size <= 2**16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """A string that changes when the tokenizer's behaviour changes (part of the cache key).

    The byte tokenizer is ``"bytes"``. Other tokenizers are identified by class, vocabulary size, the
    serialized Hugging Face model when one is reachable, and the encoding of a fixed probe sentence.
    """
    if isinstance(tokenizer, ByteTokenizer):
        return "bytes"
    digest = hashlib.sha256()
    digest.update(f"{type(tokenizer).__qualname__}:{tokenizer.vocab_size}".encode())
    hf_model = getattr(tokenizer, "_tok", None)
    if hf_model is not None and hasattr(hf_model, "to_str"):
        digest.update(str(hf_model.to_str()).encode("utf-8"))
    digest.update(repr(tokenizer.encode(_FINGERPRINT_PROBE)).encode())
    return digest.hexdigest()


def source_fingerprint(path: Path) -> str:
    """Absolute path, size and mtime of a file, or of every ``.txt`` file under a folder."""
    files = sorted(p for p in path.rglob("*.txt") if p.is_file()) if path.is_dir() else [path]
    parts = [str(path.resolve())]
    for file in files:
        stat = file.stat()
        parts.append(f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
    return "\n".join(parts)


def cache_key(path: Path, fmt: CorpusFormat, tokenizer: Tokenizer) -> str:
    """Hex key naming the cache folder of ``path`` read as ``fmt`` and tokenized by ``tokenizer``."""
    material = "\n".join([f"v{CACHE_FORMAT_VERSION}", fmt, tokenizer_fingerprint(tokenizer), source_fingerprint(path)])
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:24]


def encode_document(text: str, tokenizer: Tokenizer, dtype: np.dtype) -> np.ndarray:
    """Token ids of one document as a 1-D array of ``dtype`` (a fast path for the byte tokenizer)."""
    if isinstance(tokenizer, ByteTokenizer):
        return np.frombuffer(text.encode("utf-8", errors="surrogateescape"), dtype=np.uint8).astype(dtype)
    clean_text = text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    ids = np.asarray(tokenizer.encode(clean_text), dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
        raise DataError(f"tokenizer produced ids outside [0, {tokenizer.vocab_size}): {ids.min()}..{ids.max()}")
    return ids.astype(dtype)


def concatenate_documents(documents: list[np.ndarray], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Flat token array and ``int64`` offsets (length ``len(documents) + 1``) of tokenized documents."""
    lengths = np.array([len(d) for d in documents], dtype=np.int64)
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(lengths)])
    tokens = np.concatenate(documents).astype(dtype, copy=False) if documents else np.zeros(0, dtype=dtype)
    return tokens, offsets


def tokenize_documents(
    labelled_documents: Iterable[tuple[Split, str]], tokenizer: Tokenizer, source: str
) -> dict[Split, TokenizedSplit]:
    """Tokenize ``(split, text)`` pairs into one :class:`TokenizedSplit` per split (empty ones included)."""
    dtype = token_dtype(tokenizer.vocab_size)
    per_split: dict[Split, list[np.ndarray]] = {split: [] for split in SPLITS}
    for split, text in labelled_documents:
        per_split[split].append(encode_document(text, tokenizer, dtype))
    result: dict[Split, TokenizedSplit] = {}
    for split, documents in per_split.items():
        tokens, offsets = concatenate_documents(documents, dtype)
        result[split] = TokenizedSplit(tokens=tokens, doc_offsets=offsets, split=split, source=source)
    return result


def _save_array_atomically(array: np.ndarray, target: Path) -> None:
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.save(file, array)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _array_paths(folder: Path, split: Split) -> tuple[Path, Path]:
    return folder / f"{split}.tokens.npy", folder / f"{split}.offsets.npy"


def save_tokenized(folder: Path, splits: dict[Split, TokenizedSplit], meta: dict[str, object]) -> None:
    """Write every split's arrays to ``folder``, then ``meta.json`` (which marks the cache complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, data in splits.items():
        tokens_path, offsets_path = _array_paths(folder, split)
        _save_array_atomically(data.tokens, tokens_path)
        _save_array_atomically(data.doc_offsets, offsets_path)
    temporary = folder / f"{_META_FILE}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    os.replace(temporary, folder / _META_FILE)


def load_cached_split(folder: Path, split: Split, source: str) -> TokenizedSplit | None:
    """The cached split in ``folder`` (memory-mapped), or ``None`` when the cache is absent or incomplete."""
    tokens_path, offsets_path = _array_paths(folder, split)
    if not (folder / _META_FILE).is_file() or not tokens_path.is_file() or not offsets_path.is_file():
        return None
    try:
        tokens = np.load(tokens_path, mmap_mode="r")
    except ValueError:  # an empty array cannot be memory-mapped
        tokens = np.load(tokens_path)
    offsets = np.load(offsets_path)
    return TokenizedSplit(tokens=tokens, doc_offsets=offsets, split=split, source=source)


def _cache_meta(path: Path, fmt: CorpusFormat, tokenizer: Tokenizer, splits: dict[Split, TokenizedSplit]) -> dict:
    return {
        "cache_format_version": CACHE_FORMAT_VERSION,
        "source": str(path.resolve()),
        "format": fmt,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "vocab_size": tokenizer.vocab_size,
        "splits": {s: {"documents": d.num_documents, "tokens": d.num_tokens} for s, d in splits.items()},
    }


def _resolve_tokenizer(tokenizer: Tokenizer | str | None) -> Tokenizer:
    return load_tokenizer(tokenizer) if tokenizer is None or isinstance(tokenizer, str) else tokenizer


def load_split(
    path: str | Path,
    split: str,
    tokenizer: Tokenizer | str | None = None,
    cache_dir: str | Path | None = None,
    fmt: CorpusFormat | None = None,
    progress: bool | None = None,
    use_cache: bool = True,
) -> TokenizedSplit:
    """Tokens and document offsets of one split of the corpus at ``path``, from the cache when possible.

    ``tokenizer`` is a tokenizer object or a spec for :func:`titans.tokenizer.load_tokenizer` (``None``
    means bytes). On a cache miss all splits are tokenized in one pass and cached under ``cache_dir``
    (default :func:`default_cache_dir`). Raises :class:`FileNotFoundError` for a missing path and
    :class:`DataError` for an unreadable corpus or a split without documents.
    """
    path = check_exists(path)
    wanted = normalize_split(split)
    fmt = fmt or detect_format(path)
    tok = _resolve_tokenizer(tokenizer)
    folder = Path(cache_dir or default_cache_dir()).expanduser() / cache_key(path, fmt, tok)
    cached = load_cached_split(folder, wanted, str(path)) if use_cache else None
    if cached is None:
        splits = tokenize_documents(iter_labelled_documents(path, fmt, progress), tok, str(path))
        if use_cache:
            save_tokenized(folder, splits, _cache_meta(path, fmt, tok, splits))
        cached = splits[wanted]
    if cached.num_documents == 0 or cached.num_tokens == 0:
        raise DataError(f"{path}: no documents in the {wanted!r} split")
    return cached
