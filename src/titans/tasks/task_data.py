"""Samples for ``titans task``: building them from a :class:`~titans.tasks.run_config.TaskDataConfig`, writing
them (``titans task generate``) and reading a written set back (``titans task eval --data``).

Roles and seeds (so training never sees an evaluation prompt):

* needle tasks: one :class:`~titans.tasks.needle.NeedleConfig` (seed ``data.seed``), split 80/10/10 into
  train/validation/test; an evaluation at other lengths (``data.eval_lengths``) draws a fresh set;
* S-NIAH: evaluation prompts with seed ``data.seed`` (depths cycled through ``data.depths``, balanced for
  the length × depth heatmap), training prompts with ``seed + 1`` and validation prompts with ``seed + 2``
  (random depths);
* BABILong: evaluation questions from the bAbI *test* file hidden in the Gutenberg *test* books; training
  and validation questions from the bAbI *train* file (disjoint slices) hidden in the *train* books.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np

from titans.tasks.babi import load_babi_task
from titans.tasks.babilong import BabilongSample, generate_babilong_samples, load_background_sentences
from titans.tasks.export import read_jsonl, write_needle_datasets, write_suite
from titans.tasks.needle import NeedleConfig, NeedleDataset, NeedleDatasets, generate_needle_datasets
from titans.tasks.run_config import TaskDataConfig, TaskSpec
from titans.tasks.sniah import SNIAHSample, generate_sniah_samples
from titans.tokenizer import Tokenizer, load_tokenizer

TextSample: TypeAlias = SNIAHSample | BabilongSample
Role = Literal["train", "validation", "eval"]
ROLES: tuple[str, ...] = ("train", "validation", "eval")
NEEDLE_MANIFEST = "config.json"
SUITE_MANIFEST = "manifest.json"


# ------------------------------------------------------------------------------------------------ needle


def needle_config(data: TaskDataConfig, lengths: Sequence[int] | None = None) -> NeedleConfig:
    """The needle settings of ``data`` (split 80/10/10), at ``lengths`` (default ``data.lengths``)."""
    total = data.num_samples
    held_out = total // 10
    return NeedleConfig(
        num_samples=total,
        lengths=tuple(int(length) for length in (lengths if lengths is not None else data.lengths)),
        seed=data.seed,
        split_sizes=(total - 2 * held_out, held_out, held_out),
    )


def needle_datasets(data: TaskDataConfig, lengths: Sequence[int] | None = None) -> NeedleDatasets:
    """The three needle splits of ``data`` (see :func:`needle_config`)."""
    return generate_needle_datasets(needle_config(data, lengths))


def needle_test_set(data: TaskDataConfig) -> NeedleDataset:
    """The evaluation set: the test split, at ``data.eval_lengths`` when those are set."""
    return needle_datasets(data, data.evaluation_lengths).test


def load_needle_split(folder: str | Path, split: str = "test") -> NeedleDataset:
    """Read ``<folder>/<split>.jsonl`` written by ``titans task generate needle``."""
    path = Path(folder) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"needle data not found: {path} (write it with 'titans task generate needle')")
    records = read_jsonl(path)
    sequences = [np.asarray(record["input_ids"], dtype=np.int64) for record in records]
    return NeedleDataset(split, sequences, [int(record["target"]) for record in records])


# ------------------------------------------------------------------------------------------------ text


def _tokenizer(data: TaskDataConfig) -> Tokenizer:
    return load_tokenizer(data.tokenizer)


def text_samples(data: TaskDataConfig, role: Role, lengths: Sequence[int] | None = None) -> list[TextSample]:
    """S-NIAH or BABILong samples of ``role`` at ``lengths`` (defaults: the role's lengths and counts)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    spec = data.spec
    if lengths is None:
        lengths = data.evaluation_lengths if role == "eval" else data.lengths
    count = {"train": data.num_samples, "validation": data.val_samples, "eval": data.eval_samples}[role]
    if spec.kind == "sniah":
        return _sniah(data, spec, role, lengths, count)
    if spec.kind == "babilong":
        return _babilong(data, spec, role, lengths, count)
    raise ValueError(f"task {spec.name!r} has no text samples")


def _sniah(data: TaskDataConfig, spec: TaskSpec, role: Role, lengths: Sequence[int], count: int) -> list[TextSample]:
    seed = data.seed + {"eval": 0, "train": 1, "validation": 2}[role]
    samples: list[TextSample] = []
    for length in lengths:
        samples.extend(
            generate_sniah_samples(
                spec.generator_name,
                int(length),
                count,
                seed=seed,
                tokenizer=_tokenizer(data),
                depths=data.depths,
                depth_assignment="cycle" if role == "eval" else "random",
                data_dir=data.data_dir,
            )
        )
    return samples


def _babilong(data: TaskDataConfig, spec: TaskSpec, role: Role, lengths: Sequence[int], count: int) -> list[TextSample]:
    split: Literal["test", "train"] = "test" if role == "eval" else "train"
    questions = list(load_babi_task(spec.generator_name, split, "1k", data.data_dir))
    if role == "validation":  # the training questions are the first ones of the file; validation the last
        questions = questions[::-1]
    background = None
    if any(length > 0 for length in lengths):
        background = load_background_sentences(split, data.background_max_chars, data.data_dir)
    samples: list[TextSample] = []
    for length in lengths:
        samples.extend(
            generate_babilong_samples(
                spec.generator_name,
                int(length),
                count,
                seed=data.seed,
                tokenizer=_tokenizer(data),
                on_too_long="skip",
                questions=questions,
                background_sentences=background,
                data_dir=data.data_dir,
            )
        )
    if not samples:
        raise ValueError(f"{spec.name}: no sample fits the lengths {list(lengths)}; use longer lengths")
    return samples


def load_text_samples(folder: str | Path) -> list[TextSample]:
    """Read back a set written by :func:`write_task_data` (``manifest.json`` and one JSONL per length).

    The files must hold the token ids (they do unless written without them).
    """
    folder = Path(folder)
    manifest_path = folder / SUITE_MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no {SUITE_MANIFEST} in {folder} (write it with 'titans task generate')")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    samples: list[TextSample] = []
    for entry in manifest["files"]:
        for record in read_jsonl(folder / entry["path"]):
            samples.append(_sample_from_record(record))
    return samples


def _sample_from_record(record: dict[str, Any]) -> TextSample:
    if "prompt_ids" not in record:
        raise ValueError("the data files hold no token ids; regenerate them with token ids")
    cls: type[SNIAHSample] | type[BabilongSample] = SNIAHSample if "depth_percent" in record else BabilongSample
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in record.items() if key in names})


# ------------------------------------------------------------------------------------------------ writing


def write_task_data(data: TaskDataConfig, out_dir: str | Path, role: Role = "eval") -> dict[str, Any]:
    """Write ``data``'s samples to ``out_dir`` and return the manifest.

    Needle tasks: ``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` and ``config.json``, one draw at
    the evaluation lengths (``role="eval"``) or the training lengths. Text tasks: the samples of ``role``
    as one JSONL per (task, length) plus ``manifest.json``.
    """
    out = Path(out_dir)
    if data.spec.is_needle:
        lengths = data.evaluation_lengths if role == "eval" else data.lengths
        return write_needle_datasets(needle_datasets(data, lengths), out)
    samples = text_samples(data, role)
    metadata = {"task": data.spec.name, "role": role, "data": dataclasses.asdict(data)}
    return write_suite(samples, out, metadata=metadata)  # type: ignore[arg-type]


__all__ = [
    "ROLES",
    "TextSample",
    "load_needle_split",
    "load_text_samples",
    "needle_config",
    "needle_datasets",
    "needle_test_set",
    "text_samples",
    "write_task_data",
]
