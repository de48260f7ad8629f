"""A small bundled public-domain corpus, so that training works out of the box with no data argument.

``sample_books.jsonl.gz`` holds six Project Gutenberg books (four train, one valid, one test), some truncated,
about 1.12 MB of text in all; ``README.md`` in this folder names them.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

SAMPLE_CORPUS_FILE = "sample_books.jsonl.gz"


def sample_corpus_path() -> Path:
    """Path of the bundled sample corpus (a JSONL file with ``text`` and ``split`` fields).

    When the package is installed somewhere without real files (a zip), the corpus is copied once into the
    data cache folder and that copy's path is returned.
    """
    resource = resources.files(__name__).joinpath(SAMPLE_CORPUS_FILE)
    if isinstance(resource, Path):
        return resource
    from titans.data.tokenized import default_cache_dir

    target = default_cache_dir() / "sample_data" / SAMPLE_CORPUS_FILE
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with resources.as_file(resource) as extracted:
            shutil.copyfile(extracted, target)
    return target
