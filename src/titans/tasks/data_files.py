"""Locating the shared data files (never copied into the repository).

The data directory is, in order of preference:

1. the ``TITANS_DATA_DIR`` environment variable, when it is set (and then *only* that directory);
2. ``../shared/data`` relative to the current working directory;
3. ``../shared/data`` relative to the repository root (the directory holding ``pyproject.toml``
   above this package).

Every loader in :mod:`titans.tasks` takes an optional ``data_dir`` argument that overrides all of this.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV_VAR = "TITANS_DATA_DIR"
"""Environment variable naming the directory that holds the shared data files."""

BABI_ARCHIVE = "babi_tasks_1-20_v1-2_en.tar.xz"
"""bAbI QA tasks 1-20, v1.2, English (``en``, ``en-10k``, ``en-valid``, ``en-valid-10k``)."""

PAUL_GRAHAM_RULER_JSON = "PaulGrahamEssays_ruler.json.xz"
"""RULER's concatenated Paul Graham essays: one JSON object ``{"text": ...}``."""

PAUL_GRAHAM_NIAH_ARCHIVE = "paul_graham_essays_niah.tar.xz"
"""The 49 essays of the original needle-in-a-haystack test, ``PaulGrahamEssays/*.txt``."""

GUTENBERG_JSONL = "gutenberg_pg19like.jsonl.xz"
"""221 public-domain books, one JSON object per line with ``text`` and ``split`` (train/valid/test)."""

_RELATIVE_DATA_DIR = Path("..") / "shared" / "data"


def _repository_root() -> Path | None:
    """The nearest ancestor of this file that holds a ``pyproject.toml`` (``None`` if installed elsewhere)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return None


def candidate_data_dirs() -> list[Path]:
    """The directories searched for data files, in order (see the module docstring)."""
    from_env = os.environ.get(DATA_DIR_ENV_VAR)
    if from_env:
        return [Path(from_env).expanduser()]
    candidates = [(Path.cwd() / _RELATIVE_DATA_DIR).resolve()]
    repo_root = _repository_root()
    if repo_root is not None:
        from_repo = (repo_root / _RELATIVE_DATA_DIR).resolve()
        if from_repo not in candidates:
            candidates.append(from_repo)
    return candidates


def default_data_dir() -> Path | None:
    """The first existing directory of :func:`candidate_data_dirs`, or ``None`` when none exists."""
    for directory in candidate_data_dirs():
        if directory.is_dir():
            return directory
    return None


def find_data_file(name: str, data_dir: str | Path | None = None) -> Path:
    """Return the path of the shared data file ``name``.

    Args:
        name: the file name, e.g. :data:`BABI_ARCHIVE`.
        data_dir: a directory to look in instead of the default locations.

    Raises:
        FileNotFoundError: naming the file, every directory searched and the ``TITANS_DATA_DIR`` variable.
    """
    directories = [Path(data_dir).expanduser()] if data_dir is not None else candidate_data_dirs()
    for directory in directories:
        path = directory / name
        if path.is_file():
            return path
    searched = ", ".join(str(d) for d in directories)
    raise FileNotFoundError(
        f"data file {name!r} not found (searched: {searched}). Set the {DATA_DIR_ENV_VAR} environment "
        f"variable to the directory holding it (by default ../shared/data relative to the repository root "
        f"or the current directory), or pass data_dir explicitly."
    )


def data_file_available(name: str, data_dir: str | Path | None = None) -> bool:
    """Whether :func:`find_data_file` would find ``name`` (for skipping tests cleanly)."""
    try:
        find_data_file(name, data_dir)
    except FileNotFoundError:
        return False
    return True
