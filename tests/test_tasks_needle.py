"""The needle-position task: generation, splits, padding-explicit collation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from titans.tasks.needle import (
    NEEDLE_ID,
    PAD_ID,
    NeedleConfig,
    NeedleExample,
    collate_needle_batch,
    generate_needle_datasets,
    mask_padding_logits,
)


@pytest.fixture(scope="module")
def default_datasets():
    return generate_needle_datasets()


def test_default_config_matches_the_seed_project() -> None:
    config = NeedleConfig()
    assert config.num_samples == 10_000
    assert config.lengths == (64, 128, 256)
    assert config.seed == 42
    assert config.split_sizes == (8_000, 1_000, 1_000)
    assert config.vocab_size == 128
    assert config.needle_id == NEEDLE_ID == 127


def test_default_splits_and_format(default_datasets) -> None:
    assert [len(default_datasets.split(name)) for name in ("train", "validation", "test")] == [8000, 1000, 1000]
    all_lengths = set()
    for name in ("train", "validation", "test"):
        dataset = default_datasets.split(name)
        for example in dataset:
            sequence = example.input_ids
            assert sequence.dtype == np.int64
            assert int((sequence == NEEDLE_ID).sum()) == 1
            assert sequence[example.target] == NEEDLE_ID
            fillers = np.delete(sequence, example.target)
            assert fillers.min() >= 1 and fillers.max() <= 126
            all_lengths.add(example.length)
    assert all_lengths == {64, 128, 256}


def test_lengths_and_positions_are_roughly_uniform(default_datasets) -> None:
    train = default_datasets.train
    counts = np.bincount(train.lengths)[[64, 128, 256]]
    assert counts.min() > 0.3 * len(train)  # each ~1/3
    relative = train.targets / train.lengths
    histogram = np.histogram(relative, bins=5, range=(0, 1))[0]
    assert histogram.min() > 0.17 * len(train)  # each bin ~20%


def test_deterministic_by_seed_and_seeds_differ(default_datasets) -> None:
    again = generate_needle_datasets(NeedleConfig())
    for name in ("train", "validation", "test"):
        first, second = default_datasets.split(name), again.split(name)
        assert np.array_equal(first.targets, second.targets)
        assert all(np.array_equal(a, b) for a, b in zip(first.sequences, second.sequences))
    other = generate_needle_datasets(NeedleConfig(seed=43))
    assert not np.array_equal(other.test.targets, default_datasets.test.targets)


def test_hard_setting_has_long_sequences() -> None:
    config = NeedleConfig.hard(lengths=(1024, 4096), num_samples=50, seed=7)
    assert config.split_sizes == (40, 5, 5)
    datasets = generate_needle_datasets(config)
    lengths = set(datasets.train.lengths.tolist()) | set(datasets.test.lengths.tolist())
    assert lengths <= {1024, 4096} and len(lengths) == 2
    for example in datasets.train:
        assert example.input_ids[example.target] == NEEDLE_ID


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 10, "split_sizes": (8, 1, 2)}, "sum to 11"),
        ({"lengths": ()}, "lengths"),
        ({"lengths": (0, 64)}, "lengths"),
        ({"vocab_size": 2}, "vocab_size"),
        ({"num_samples": 0, "split_sizes": (0, 0, 0)}, "num_samples"),
    ],
)
def test_bad_config_is_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        NeedleConfig(**kwargs)


def test_collate_pads_right_and_masks_padding() -> None:
    examples = [
        NeedleExample(np.array([5, 127, 9], dtype=np.int64), 1),
        NeedleExample(np.array([127, 3, 4, 5, 6], dtype=np.int64), 0),
    ]
    batch = collate_needle_batch(examples)
    assert batch.input_ids.dtype == torch.long and batch.input_ids.shape == (2, 5)
    assert batch.input_ids.tolist() == [[5, 127, 9, PAD_ID, PAD_ID], [127, 3, 4, 5, 6]]
    assert batch.attention_mask.tolist() == [[True, True, True, False, False], [True] * 5]
    assert batch.lengths.tolist() == [3, 5]
    assert batch.targets.tolist() == [1, 0]
    padded = collate_needle_batch(examples, pad_to_multiple_of=4)
    assert padded.input_ids.shape == (2, 8)
    assert padded.attention_mask.sum(dim=1).tolist() == [3, 5]
    assert batch.to("cpu").input_ids.equal(batch.input_ids)


def test_collate_refuses_bad_batches() -> None:
    with pytest.raises(ValueError, match="empty batch"):
        collate_needle_batch([])
    with pytest.raises(ValueError, match="padding id"):
        collate_needle_batch([NeedleExample(np.array([0, 127]), 1)])
    with pytest.raises(ValueError, match="outside"):
        collate_needle_batch([NeedleExample(np.array([3, 127]), 2)])
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        collate_needle_batch([NeedleExample(np.array([3, 127]), 1)], pad_to_multiple_of=0)


def test_collate_works_with_a_dataloader(default_datasets) -> None:
    loader = torch.utils.data.DataLoader(default_datasets.test, batch_size=16, collate_fn=collate_needle_batch)
    batch = next(iter(loader))
    rows = torch.arange(batch.input_ids.shape[0])
    assert torch.all(batch.input_ids[rows, batch.targets] == NEEDLE_ID)
    assert torch.all(batch.input_ids[~batch.attention_mask] == PAD_ID)
    assert torch.all(batch.attention_mask.sum(dim=1) == batch.lengths)


def test_mask_padding_logits_never_picks_padding() -> None:
    mask = torch.tensor([[True, True, False, False]])
    logits = torch.tensor([[0.0, 1.0, 50.0, 60.0]])
    masked = mask_padding_logits(logits, mask)
    assert masked.argmax(dim=1).item() == 1
    probabilities = masked.softmax(dim=1)
    assert probabilities[0, 2:].sum().item() == 0.0
    with pytest.raises(ValueError, match="shape"):
        mask_padding_logits(logits, mask[:, :3])
