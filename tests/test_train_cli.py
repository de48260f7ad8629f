"""The README's commands: ``titans train`` on the tiny config, then ``titans eval`` and ``titans generate`` on the
checkpoint it wrote. The run is shortened with ``--set`` (the full tiny run takes a few minutes on 2 cores)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from titans.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"

SHORTER = [
    "train.steps=12", "train.batch_size=8", "train.warmup_steps=4", "train.log_every=6", "train.eval_every=6",
    "train.eval_batches=1", "train.checkpoint_every=6", "eval.max_batches=2", "eval.max_document_len=1200",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``titans train --config configs/tiny.yaml --out RUN`` (shortened), in this process on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cli")
    run_dir = root / "tiny"
    overrides = [arg for item in [*SHORTER, f"data.cache_dir={root / 'cache'}"] for arg in ("--set", item)]
    status = main(["train", "--config", str(TINY), "--out", str(run_dir), "--no-progress", *overrides])
    yield status, run_dir
    torch.set_num_threads(previous)


def _records(run_dir: Path, split: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def test_train_writes_checkpoints_metrics_and_plots(tiny_run):
    status, run_dir = tiny_run
    assert status == 0
    for name in ("best", "last"):
        assert (run_dir / name / "model.safetensors").is_file()
        assert (run_dir / name / "config.yaml").is_file()
    assert (run_dir / "last" / "trainer_state.pt").is_file()
    assert [r["step"] for r in _records(run_dir, "train")] == [6, 12]
    assert (run_dir / "plots" / "loss_curves.png").stat().st_size > 1000
    assert (run_dir / "plots" / "bits_by_position_valid.png").stat().st_size > 1000
    evaluation = json.loads((run_dir / "eval.json").read_text())["valid"]
    assert evaluation["unit"] == "bits_per_byte"
    assert math.isclose(evaluation["bits"], evaluation["loss"] / math.log(2))


def test_validation_loss_falls(tiny_run):
    _, run_dir = tiny_run
    valid = _records(run_dir, "valid")
    assert [r["step"] for r in valid] == [0, 6, 12]
    first, last = valid[0]["bits"], valid[-1]["bits"]
    assert first > 7.5, "an untrained byte model is near 8 bits per byte"
    assert last < first - 1.0, f"validation did not fall clearly: {first:.3f} -> {last:.3f} bits per byte"


def test_eval_command(tiny_run, capsys):
    _, run_dir = tiny_run
    assert main(["eval", "--checkpoint", str(run_dir), "--split", "test"]) == 0
    printed = capsys.readouterr().out
    assert "test:" in printed and "bits per byte" in printed
    results = json.loads((run_dir / "eval.json").read_text())
    assert set(results) == {"valid", "test"}, "each split keeps its own entry"
    by_position = results["test"]["by_position"]
    assert by_position["documents"] == 1 and by_position["document_tokens"] == [1200]
    assert [b["label"] for b in by_position["buckets"]] == ["0–128", "128–512", "512–2K"]
    assert sum(b["tokens"] for b in by_position["buckets"]) == 1199
    assert (run_dir / "plots" / "bits_by_position_test.png").is_file()


def test_generate_command(tiny_run, capsys):
    _, run_dir = tiny_run
    args = ["generate", "--checkpoint", str(run_dir), "--prompt", "Alice was", "--max-new-tokens", "40", "--seed", "1"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("Alice was") and len(first) > len("Alice was") + 10
    assert main(args) == 0
    assert capsys.readouterr().out == first, "--seed makes sampling repeatable"
