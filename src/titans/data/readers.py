"""Corpus readers: turn a path into documents (strings), each tagged with its split.

Four layouts are recognised from the path (see :func:`detect_format`):

``text``
    A single text file (``.txt``, optionally ``.gz``/``.xz``/``.bz2``) holding one document. Its characters
    are cut 90/5/5 into train/valid/test, so each split gets one contiguous document.
``folder``
    A directory of ``.txt`` files (searched recursively, sorted by relative path), one document per file.
    Each file goes to a split by a deterministic hash of its relative path (90/5/5).
``jsonl``
    One JSON object per line with a ``text`` field and an optional ``split`` field (``.jsonl``/``.ndjson``,
    optionally ``.gz``/``.xz``/``.bz2``). A line without ``split`` goes to a split by a deterministic hash
    of its document index (90/5/5).
``enwik8``
    The Hutter-prize layout (a file whose name contains ``enwik8``, raw or
    ``.gz``/``.xz``/``.bz2``/``.zip``): bytes ``[0, 90%)`` train, ``[90%, 95%)`` valid, ``[95%, 100%)``
    test. For the full 10^8-byte file these are exactly the standard 90M/5M/5M cuts; a shorter prefix (such
    as the 4,154,064-byte smoke-test file) is cut at the same proportions. The bytes are decoded with
    ``surrogateescape`` so that the byte tokenizer recovers them exactly, even where a cut falls inside a
    multi-byte character.

Split names are ``train``, ``valid`` and ``test``; ``validation``, ``val`` and ``dev`` also mean ``valid``.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import zipfile
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Literal, cast

from tqdm import tqdm

Split = Literal["train", "valid", "test"]
CorpusFormat = Literal["text", "folder", "jsonl", "enwik8"]

SPLITS: tuple[Split, ...] = ("train", "valid", "test")
CORPUS_FORMATS: tuple[CorpusFormat, ...] = ("text", "folder", "jsonl", "enwik8")

_SPLIT_ALIASES: dict[str, Split] = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "validation": "valid",
    "val": "valid",
    "dev": "valid",
    "test": "test",
}
_COMPRESSED_SUFFIXES = (".gz", ".xz", ".bz2")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_TRAIN_FRACTION = 0.90
_VALID_END_FRACTION = 0.95
#: Files at least this large show a progress bar while being read (unless told otherwise).
PROGRESS_MIN_BYTES = 8 * 2**20


class DataError(ValueError):
    """A corpus could not be read: empty, malformed, or without documents in the requested split."""


def normalize_split(name: str) -> Split:
    """Map a split name or alias (``validation``, ``val``, ``dev``...) to ``train``, ``valid`` or ``test``."""
    split = _SPLIT_ALIASES.get(name.strip().lower())
    if split is None:
        raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)} (or 'validation')")
    return split


def hash_split(key: str) -> Split:
    """Deterministic 90/5/5 split from a SHA-256 hash of ``key`` (the same on every run and machine)."""
    fraction = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
    if fraction < _TRAIN_FRACTION:
        return "train"
    return "valid" if fraction < _VALID_END_FRACTION else "test"


def split_cut_points(total: int) -> tuple[int, int]:
    """The two cut points of a contiguous 90/5/5 split of ``total`` units (bytes or characters)."""
    return total * 90 // 100, total * 95 // 100


def _strip_compression_suffix(name: str) -> str:
    for suffix in _COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def detect_format(path: str | Path) -> CorpusFormat:
    """Guess the corpus layout from the path: a directory, an ``enwik8`` file, a JSONL file, or plain text."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    name = path.name.lower()
    if "enwik8" in name:
        return "enwik8"
    if _strip_compression_suffix(name).endswith(_JSONL_SUFFIXES):
        return "jsonl"
    return "text"


def check_exists(path: str | Path) -> Path:
    """Return ``path`` as a :class:`Path`, or raise :class:`FileNotFoundError` naming it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"corpus not found: {path}")
    return path


def _decompressing_reader(raw: IO[bytes], name: str) -> IO[bytes]:
    lowered = name.lower()
    if lowered.endswith(".gz"):
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    if lowered.endswith(".xz"):
        return cast(IO[bytes], lzma.LZMAFile(raw, mode="rb"))
    if lowered.endswith(".bz2"):
        return cast(IO[bytes], bz2.BZ2File(raw, mode="rb"))
    return raw


class _ProgressStream:
    """A (possibly compressed) binary stream, with a bar that tracks how much of the file on disk was read."""

    def __init__(self, path: Path, progress: bool | None):
        self.path = path
        self._raw = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.stream = _decompressing_reader(self._raw, path.name)
        size = path.stat().st_size
        enabled = size >= PROGRESS_MIN_BYTES if progress is None else progress
        self._bar = tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=f"tokenizing {path.name}",
            disable=not enabled,
            leave=False,
        )

    def tick(self) -> None:
        """Advance the bar to the current position in the file on disk."""
        if not self._bar.disable:
            self._bar.update(self._raw.tell() - self._bar.n)

    def close(self) -> None:
        self._bar.close()
        self.stream.close()
        self._raw.close()


@contextmanager
def _open_with_progress(path: Path, progress: bool | None) -> Iterator[_ProgressStream]:
    reader = _ProgressStream(path, progress)
    try:
        yield reader
    finally:
        reader.close()


def _read_all_bytes(path: Path) -> bytes:
    """Read a whole file, decompressing ``.gz``/``.xz``/``.bz2``, or the single member of a ``.zip``."""
    if path.name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if not m.endswith("/")]
            if len(members) != 1:
                raise DataError(f"{path}: expected a zip archive with exactly one file, found {len(members)}")
            return archive.read(members[0])
    with open(path, "rb") as raw, _decompressing_reader(raw, path.name) as stream:
        return stream.read()


def _cut_90_5_5(data: str) -> Iterator[tuple[Split, str]]:
    train_end, valid_end = split_cut_points(len(data))
    yield "train", data[:train_end]
    yield "valid", data[train_end:valid_end]
    yield "test", data[valid_end:]


def _require_nonempty(path: Path, data: bytes) -> None:
    if not data.strip():
        raise DataError(f"{path}: the file is empty")


def iter_text_file(path: Path) -> Iterator[tuple[Split, str]]:
    """One text file = one document, cut 90/5/5 by characters into train/valid/test."""
    data = _read_all_bytes(path)
    _require_nonempty(path, data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from e
    yield from _cut_90_5_5(text)


def iter_enwik8(path: Path) -> Iterator[tuple[Split, str]]:
    """The enwik8 layout: bytes cut 90/5/5 (proportionally for a prefix), decoded with ``surrogateescape``."""
    data = _read_all_bytes(path)
    _require_nonempty(path, data)
    train_end, valid_end = split_cut_points(len(data))
    pieces: tuple[tuple[Split, bytes], ...] = (
        ("train", data[:train_end]),
        ("valid", data[train_end:valid_end]),
        ("test", data[valid_end:]),
    )
    for split, piece in pieces:
        yield split, piece.decode("utf-8", errors="surrogateescape")


def iter_text_folder(path: Path) -> Iterator[tuple[Split, str]]:
    """Every ``.txt`` file under ``path`` (sorted) is one document, split by a hash of its relative path."""
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise DataError(f"{path}: the folder holds no .txt files")
    for file in files:
        relative_name = file.relative_to(path).as_posix()
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{file}: not UTF-8 text (bad byte at offset {e.start})") from e
        if text:
            yield hash_split(relative_name), text


def _parse_jsonl_record(path: Path, line_number: int, line: bytes) -> tuple[str, Split | None]:
    """The ``text`` and the (normalised, possibly absent) ``split`` of one JSONL line."""
    where = f"{path}, line {line_number}"
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "text" not in record:
        raise DataError(f"{where}: no 'text' field (fields: {', '.join(sorted(record)) or 'none'})")
    text = record["text"]
    if not isinstance(text, str):
        raise DataError(f"{where}: the 'text' field is {type(text).__name__}, not a string")
    raw_split = record.get("split")
    if raw_split is None:
        return text, None
    try:
        return text, normalize_split(str(raw_split))
    except DataError as e:
        raise DataError(f"{where}: {e}") from e


def iter_jsonl(path: Path, progress: bool | None = None) -> Iterator[tuple[Split, str]]:
    """JSONL documents with their split (given, or a 90/5/5 hash of the document index when absent)."""
    document_index = 0
    with _open_with_progress(path, progress) as reader:
        for line_number, line in enumerate(reader.stream, start=1):
            if not line.strip():
                continue
            text, split = _parse_jsonl_record(path, line_number, line)
            yield split or hash_split(f"document-{document_index}"), text
            document_index += 1
            reader.tick()
    if document_index == 0:
        raise DataError(f"{path}: the file holds no JSONL documents")


def iter_labelled_documents(
    path: str | Path, fmt: CorpusFormat | None = None, progress: bool | None = None
) -> Generator[tuple[Split, str], None, None]:
    """Every non-empty document of the corpus at ``path`` as ``(split, text)``, in corpus order.

    ``fmt`` overrides :func:`detect_format`. ``progress`` shows a read progress bar (default: for large
    JSONL files).
    """
    path = check_exists(path)
    fmt = fmt or detect_format(path)
    documents: Iterator[tuple[Split, str]]
    if fmt == "folder":
        documents = iter_text_folder(path)
    elif fmt == "jsonl":
        documents = iter_jsonl(path, progress)
    elif fmt == "enwik8":
        documents = iter_enwik8(path)
    elif fmt == "text":
        documents = iter_text_file(path)
    else:
        raise DataError(f"unknown corpus format {fmt!r}; expected one of {', '.join(CORPUS_FORMATS)}")
    try:
        for split, text in documents:
            if text:
                yield split, text
    except (EOFError, OSError, lzma.LZMAError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read or decompress the file ({type(e).__name__}: {e})") from e


def iter_documents(
    path: str | Path, split: str, fmt: CorpusFormat | None = None, progress: bool | None = None
) -> Generator[str, None, None]:
    """The documents of one split of the corpus at ``path``; :class:`DataError` if the split has none."""
    wanted = normalize_split(split)
    found = 0
    for document_split, text in iter_labelled_documents(path, fmt, progress):
        if document_split == wanted:
            found += 1
            yield text
    if found == 0:
        raise DataError(f"{path}: no documents in the {wanted!r} split")
