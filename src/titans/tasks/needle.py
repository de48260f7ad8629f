"""The needle-position task of the "titan-min" seed project (TITANS.md section 5).

Each sequence holds filler tokens drawn uniformly from 1..126 and exactly one ``NEEDLE`` token (127) at a
uniformly drawn position; the target is that position (a classification over positions). The default
setting is 10,000 sequences of length 64, 128 or 256 (uniform), seed 42, split 8,000/1,000/1,000. A "hard"
setting (:meth:`NeedleConfig.hard`) uses lengths longer than an attention window or a MAC segment.

Padding — read this before writing a model for the task. The seed project scored 0.321 because its model
attended to and pooled over padding, so short sequences (padded to 256) failed. Here padding is explicit:

* :func:`collate_needle_batch` right-pads with ``PAD_ID`` (0, never a filler or needle id) and returns an
  ``attention_mask`` that is ``True`` on real tokens and ``False`` on padding, plus the true ``lengths``.
* A model must not let padding keys be attended to (or, being causal with right padding, must at least
  never read outputs at padded positions), must not pool over padding, and must score positions only
  inside the sequence: :func:`mask_padding_logits` sets the logits of padded positions to the lowest finite
  value so that ``argmax`` and cross-entropy ignore them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

PAD_ID = 0
"""Padding token id (not used inside sequences)."""
NEEDLE_ID = 127
"""The needle token id."""
NEEDLE_VOCAB_SIZE = 128
"""Vocabulary of the task: PAD, fillers 1..126, NEEDLE."""

SplitName = Literal["train", "validation", "test"]
SPLIT_NAMES: tuple[SplitName, ...] = ("train", "validation", "test")


@dataclass(frozen=True)
class NeedleConfig:
    """Settings of the needle-position task (defaults: the seed project's exactly).

    Attributes:
        num_samples: total number of sequences.
        lengths: sequence lengths, each sequence's drawn uniformly from these.
        seed: seed of the ``numpy.random.Generator`` that draws everything.
        split_sizes: (train, validation, test) counts, summing to ``num_samples``; the first ``train``
            generated sequences are the train split, and so on.
        vocab_size: ids are PAD 0, fillers 1..vocab_size-2, NEEDLE vocab_size-1.
    """

    num_samples: int = 10_000
    lengths: tuple[int, ...] = (64, 128, 256)
    seed: int = 42
    split_sizes: tuple[int, int, int] = (8_000, 1_000, 1_000)
    vocab_size: int = NEEDLE_VOCAB_SIZE

    def __post_init__(self) -> None:
        if self.num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {self.num_samples}")
        if not self.lengths or any(int(length) < 1 for length in self.lengths):
            raise ValueError(f"lengths must be a non-empty list of positive lengths, got {self.lengths}")
        if len(self.split_sizes) != 3 or any(size < 0 for size in self.split_sizes):
            raise ValueError(f"split_sizes must be three non-negative counts, got {self.split_sizes}")
        if sum(self.split_sizes) != self.num_samples:
            raise ValueError(
                f"split_sizes {self.split_sizes} sum to {sum(self.split_sizes)}, not num_samples {self.num_samples}"
            )
        if self.vocab_size < 3:
            raise ValueError(f"vocab_size must be at least 3 (PAD, one filler, NEEDLE), got {self.vocab_size}")

    @property
    def needle_id(self) -> int:
        """The needle id, ``vocab_size - 1`` (127 by default)."""
        return self.vocab_size - 1

    @classmethod
    def hard(
        cls,
        lengths: Sequence[int] = (1024, 2048, 4096, 8192),
        num_samples: int = 2_000,
        seed: int = 42,
        vocab_size: int = NEEDLE_VOCAB_SIZE,
    ) -> NeedleConfig:
        """A long-sequence setting (longer than an attention window / MAC segment), split 80/10/10."""
        validation = test = num_samples // 10
        return cls(
            num_samples=num_samples,
            lengths=tuple(int(length) for length in lengths),
            seed=seed,
            split_sizes=(num_samples - validation - test, validation, test),
            vocab_size=vocab_size,
        )


@dataclass(frozen=True)
class NeedleExample:
    """One sequence: ``input_ids`` (int64, no padding) and the needle position ``target``."""

    input_ids: np.ndarray
    target: int

    @property
    def length(self) -> int:
        """Number of real tokens."""
        return len(self.input_ids)


class NeedleDataset:
    """One split of the needle task; indexable, so usable as a ``torch.utils.data.Dataset``."""

    def __init__(self, name: str, sequences: Sequence[np.ndarray], targets: Sequence[int]):
        if len(sequences) != len(targets):
            raise ValueError(f"{len(sequences)} sequences but {len(targets)} targets")
        self.name = name
        self.sequences = list(sequences)
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> NeedleExample:
        return NeedleExample(self.sequences[index], int(self.targets[index]))

    def __iter__(self) -> Iterator[NeedleExample]:
        for index in range(len(self)):
            yield self[index]

    @property
    def lengths(self) -> np.ndarray:
        """Sequence lengths (int64)."""
        return np.asarray([len(sequence) for sequence in self.sequences], dtype=np.int64)

    def to_records(self) -> list[dict[str, Any]]:
        """JSON-ready records ``{"split", "index", "length", "target", "input_ids"}``."""
        return [
            {
                "split": self.name,
                "index": index,
                "length": len(sequence),
                "target": int(target),
                "input_ids": sequence.tolist(),
            }
            for index, (sequence, target) in enumerate(zip(self.sequences, self.targets))
        ]


@dataclass(frozen=True)
class NeedleDatasets:
    """The three splits."""

    train: NeedleDataset
    validation: NeedleDataset
    test: NeedleDataset
    config: NeedleConfig

    def split(self, name: SplitName) -> NeedleDataset:
        """The split called ``name`` (``"train"``, ``"validation"`` or ``"test"``)."""
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLIT_NAMES}")
        dataset: NeedleDataset = getattr(self, name)
        return dataset


def generate_needle_datasets(config: NeedleConfig | None = None) -> NeedleDatasets:
    """Generate the needle-position data (deterministic in ``config.seed``).

    Lengths are uniform over ``config.lengths``, needle positions uniform in ``0..length-1``, fillers
    uniform in ``1..vocab_size-2`` (drawn in that order, all sequences at once, from one
    ``numpy.random.default_rng(config.seed)``).
    """
    config = NeedleConfig() if config is None else config
    rng = np.random.default_rng(config.seed)
    choices = np.asarray(config.lengths, dtype=np.int64)
    lengths = choices[rng.integers(len(choices), size=config.num_samples)]
    positions = rng.integers(0, lengths)  # one uniform position per sequence, in 0..length-1
    tokens = rng.integers(1, config.needle_id, size=int(lengths.sum()), dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    tokens[starts + positions] = config.needle_id
    sequences = np.split(tokens, starts[1:])
    targets = positions.tolist()
    bounds = np.cumsum((0, *config.split_sizes))
    splits = [
        NeedleDataset(name, sequences[start:stop], targets[start:stop])
        for name, start, stop in zip(SPLIT_NAMES, bounds[:-1], bounds[1:])
    ]
    return NeedleDatasets(train=splits[0], validation=splits[1], test=splits[2], config=config)


@dataclass(frozen=True)
class NeedleBatch:
    """A right-padded batch.

    Attributes:
        input_ids: (B, L) int64; positions ``>= lengths[b]`` hold ``PAD_ID``.
        attention_mask: (B, L) bool; ``True`` on real tokens, ``False`` on padding.
        lengths: (B,) int64 true lengths.
        targets: (B,) int64 needle positions (always ``< lengths``).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor

    def to(self, device: torch.device | str) -> NeedleBatch:
        """The batch on ``device``."""
        return NeedleBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            lengths=self.lengths.to(device),
            targets=self.targets.to(device),
        )


def collate_needle_batch(
    examples: Sequence[NeedleExample], pad_id: int = PAD_ID, pad_to_multiple_of: int | None = None
) -> NeedleBatch:
    """Right-pad ``examples`` with ``pad_id`` to the batch's longest length (see the module docstring).

    Args:
        examples: the sequences of the batch.
        pad_id: the padding id (must not occur in any sequence).
        pad_to_multiple_of: round the padded length up to a multiple of this (e.g. a memory chunk size).

    Raises:
        ValueError: on an empty batch, an empty sequence, a target outside its sequence, a bad
            ``pad_to_multiple_of``, or ``pad_id`` occurring inside a sequence.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be a positive integer, got {pad_to_multiple_of}")
    lengths = [len(example.input_ids) for example in examples]
    if min(lengths) == 0:
        raise ValueError("cannot collate an empty sequence")
    width = max(lengths)
    if pad_to_multiple_of is not None:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    for row, example in enumerate(examples):
        sequence = torch.as_tensor(np.asarray(example.input_ids), dtype=torch.long)
        if bool((sequence == pad_id).any()):
            raise ValueError(f"example {row} contains the padding id {pad_id}")
        if not 0 <= example.target < len(sequence):
            raise ValueError(f"example {row}: target {example.target} outside its length {len(sequence)}")
        input_ids[row, : len(sequence)] = sequence
    lengths_tensor = torch.tensor(lengths, dtype=torch.long)
    attention_mask = torch.arange(width).unsqueeze(0) < lengths_tensor.unsqueeze(1)
    targets = torch.tensor([example.target for example in examples], dtype=torch.long)
    return NeedleBatch(input_ids, attention_mask, lengths_tensor, targets)


def mask_padding_logits(position_logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Set the logits of padded positions to the dtype's lowest finite value.

    Args:
        position_logits: (B, L) one score per position.
        attention_mask: (B, L) bool, ``True`` on real tokens.

    Returns:
        A new tensor; ``argmax`` over it never picks padding, and cross-entropy gives padding zero mass.
    """
    if position_logits.shape != attention_mask.shape:
        raise ValueError(
            f"position_logits shape {tuple(position_logits.shape)} != attention_mask shape "
            f"{tuple(attention_mask.shape)}"
        )
    lowest = torch.finfo(position_logits.dtype).min
    return position_logits.masked_fill(~attention_mask.bool(), lowest)
