"""JSONL export of samples and of the needle datasets."""

from __future__ import annotations

import json
from pathlib import Path

from titans.tasks.export import read_jsonl, write_jsonl, write_needle_datasets, write_suite
from titans.tasks.needle import NeedleConfig, generate_needle_datasets
from titans.tasks.sniah import generate_sniah_suite


def test_jsonl_round_trip(tmp_path: Path) -> None:
    records = [{"a": 1, "text": "é\nline"}, {"a": 2, "text": ""}]
    assert write_jsonl(records, tmp_path / "sub" / "x.jsonl") == 2
    assert read_jsonl(tmp_path / "sub" / "x.jsonl") == records
    assert len((tmp_path / "sub" / "x.jsonl").read_text(encoding="utf-8").splitlines()) == 2


def test_write_suite_one_file_per_group(tmp_path: Path) -> None:
    samples = generate_sniah_suite(["s_niah_1"], [512, 1024], 2, seed=1)
    manifest = write_suite(samples, tmp_path, metadata={"seed": 1, "tokenizer": "bytes"})
    assert [(f["task"], f["target_length"], f["num_samples"]) for f in manifest["files"]] == [
        ("s_niah_1", 512, 2),
        ("s_niah_1", 1024, 2),
    ]
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    records = read_jsonl(tmp_path / "s_niah_1_1024.jsonl")
    assert records == [s.to_dict() for s in samples[2:]]
    assert records[0]["num_prompt_tokens"] == len(records[0]["prompt_ids"])
    write_suite(samples, tmp_path / "lean", include_token_ids=False)
    lean = read_jsonl(tmp_path / "lean" / "s_niah_1_512.jsonl")
    assert "prompt_ids" not in lean[0] and lean[0]["answer"] == samples[0].answer


def test_write_needle_datasets(tmp_path: Path) -> None:
    datasets = generate_needle_datasets(NeedleConfig(num_samples=20, split_sizes=(16, 2, 2), seed=3))
    manifest = write_needle_datasets(datasets, tmp_path)
    assert manifest["num_samples"] == {"train": 16, "validation": 2, "test": 2}
    test_records = read_jsonl(tmp_path / "test.jsonl")
    assert [r["target"] for r in test_records] == datasets.test.targets.tolist()
    assert all(r["input_ids"][r["target"]] == 127 and len(r["input_ids"]) == r["length"] for r in test_records)
    assert json.loads((tmp_path / "config.json").read_text())["config"]["seed"] == 3
