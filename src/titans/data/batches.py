"""Deterministic training batches and sequential evaluation batches as torch tensors.

Training batches are a pure function of ``(seed, step, rank, world_size)``. The rows are visited in one
random permutation per epoch, drawn from ``(seed, epoch)``; think of the epochs laid end to end as one endless
sequence of samples. Global batch ``step`` is the ``global_batch_size`` samples starting at sample
``step * global_batch_size``. Nothing depends on earlier calls, so training resumes exactly at any step, and
rank ``r`` of ``world_size`` gets rows ``r::world_size`` of the global batch: together the ranks see exactly
the batch that a single process would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from titans.data.packing import PackedDataset


class Batch(NamedTuple):
    """``input_ids`` and next-token ``labels`` (-100: ignored), ``LongTensor`` of shape ``(batch, T)``."""

    input_ids: torch.Tensor
    labels: torch.Tensor


def _as_batch(inputs: np.ndarray, labels: np.ndarray) -> Batch:
    return Batch(torch.from_numpy(inputs).long(), torch.from_numpy(labels).long())


def epoch_permutation(seed: int, epoch: int, num_rows: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``num_rows`` rows (set by ``seed`` and ``epoch`` only)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch]))
    return rng.permutation(num_rows)


class TrainBatches:
    """Shuffled training batches, addressable by step, sharded over ``world_size`` ranks.

    ``global_batch_size`` is the batch summed over all ranks and must be divisible by ``world_size``; each
    rank receives ``global_batch_size // world_size`` rows per step.
    """

    def __init__(
        self,
        dataset: PackedDataset,
        global_batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if global_batch_size % world_size:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by world_size {world_size}")
        self.dataset = dataset
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._permutations: dict[int, np.ndarray] = {}

    @property
    def local_batch_size(self) -> int:
        """Rows per step on this rank."""
        return self.global_batch_size // self.world_size

    @property
    def steps_per_epoch(self) -> float:
        """Global batches per pass over all rows (fractional when the rows do not divide evenly)."""
        return len(self.dataset) / self.global_batch_size

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) >= 2:
                self._permutations.pop(min(self._permutations))
            self._permutations[epoch] = epoch_permutation(self.seed, epoch, len(self.dataset))
        return self._permutations[epoch]

    def row_indices(self, step: int) -> np.ndarray:
        """Dataset rows of this rank's share of global batch ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        num_rows = len(self.dataset)
        offsets = np.arange(self.rank, self.global_batch_size, self.world_size, dtype=np.int64)
        sample = step * self.global_batch_size + offsets
        epochs, positions = np.divmod(sample, num_rows)
        rows = np.empty_like(sample)
        for epoch in np.unique(epochs):
            chosen = epochs == epoch
            rows[chosen] = self._permutation(int(epoch))[positions[chosen]]
        return rows

    def batch(self, step: int) -> Batch:
        """This rank's ``(input_ids, labels)`` of global batch ``step``, each ``(local_batch_size, T)``."""
        return _as_batch(*self.dataset.rows(self.row_indices(step)))

    def iterate(self, start_step: int = 0) -> Iterator[tuple[int, Batch]]:
        """Endless ``(step, batch)`` pairs from ``start_step`` on."""
        step = start_step
        while True:
            yield step, self.batch(step)
            step += 1


def iter_eval_batches(dataset: PackedDataset, batch_size: int, max_batches: int | None = None) -> Iterator[Batch]:
    """Evaluation rows, ``batch_size`` at a time (the last batch may be smaller), always the same ones.

    All rows in order by default; with ``max_batches``, at most ``max_batches * batch_size`` rows spread
    evenly over the split, so a quick validation estimate still sees every part of it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = np.arange(len(dataset), dtype=np.int64)
    if max_batches is not None and max_batches * batch_size < len(rows):
        rows = np.unique(np.linspace(0, len(rows) - 1, max_batches * batch_size).round().astype(np.int64))
    for first in range(0, len(rows), batch_size):
        yield _as_batch(*dataset.rows(rows[first : first + batch_size]))
