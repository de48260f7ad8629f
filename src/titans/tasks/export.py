"""Writing benchmark samples to JSONL (one JSON object per line), one file per (task, length)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from titans.tasks.needle import NeedleDatasets


class SuiteSample(Protocol):
    """What :func:`write_suite` needs from a sample (S-NIAH and BABILong samples qualify)."""

    task: str
    target_length: int

    def to_dict(self, include_token_ids: bool = True) -> dict[str, Any]: ...


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write ``records`` to ``path`` as JSONL (UTF-8, parent folders created); returns the record count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file written by :func:`write_jsonl`."""
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def suite_file_name(task: str, target_length: int) -> str:
    """``"<task>_<length>.jsonl"``, e.g. ``"s_niah_1_4096.jsonl"``."""
    return f"{task}_{target_length}.jsonl"


def write_suite(
    samples: Sequence[SuiteSample],
    output_dir: str | Path,
    *,
    include_token_ids: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write samples grouped by (task, target_length), one JSONL per group, plus ``manifest.json``.

    Args:
        samples: S-NIAH or BABILong samples.
        output_dir: folder to write into (created).
        include_token_ids: keep ``prompt_ids``/``answer_ids`` in the records (large at long lengths).
        metadata: extra JSON-ready information for the manifest (seed, tokenizer, ...).

    Returns:
        The manifest: ``{"metadata": ..., "files": [{"task", "target_length", "path", "num_samples"}]}``.
    """
    output_dir = Path(output_dir)
    groups: dict[tuple[str, int], list[SuiteSample]] = {}
    for sample in samples:
        groups.setdefault((sample.task, sample.target_length), []).append(sample)
    files = []
    for (task, length), group in groups.items():
        name = suite_file_name(task, length)
        count = write_jsonl((s.to_dict(include_token_ids) for s in group), output_dir / name)
        files.append({"task": task, "target_length": length, "path": name, "num_samples": count})
    manifest = {"metadata": dict(metadata or {}), "files": files}
    (output_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def write_needle_datasets(datasets: NeedleDatasets, output_dir: str | Path) -> dict[str, Any]:
    """Write ``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` and ``config.json`` of the needle task."""
    output_dir = Path(output_dir)
    counts = {
        name: write_jsonl(datasets.split(name).to_records(), output_dir / f"{name}.jsonl")
        for name in ("train", "validation", "test")
    }
    manifest = {"config": asdict(datasets.config), "num_samples": counts}
    (output_dir / "config.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
