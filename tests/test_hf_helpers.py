"""Shared pieces of the ``test_hf_*`` modules (no tests here): a small Titans configuration and a fixture that
runs the tiny models on one thread (fastest when pytest-xdist runs one worker per core)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

SMALL = dict(vocab_size=48, dim=32, depth=2, heads=2, chunk_size=4, window=6, segment_len=8,
             persistent_tokens=2, memory_expansion=2)  # fmt: skip


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
