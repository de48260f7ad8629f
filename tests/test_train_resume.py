"""Exact resume and crash-safe checkpoints.

A run stopped (here: crashed) after its checkpoint at step k and resumed with ``resume=True`` must give the
very same losses and weights as a run that never stopped; a crash while a checkpoint is being written must
leave the previous checkpoint loadable and unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from titans.models import TitansLM
from titans.training import checkpoint as ckpt
from titans.training import load_run_config, train
from titans.training import trainer as trainer_module

STEPS = 10
CRASH_AFTER = 7  # the checkpoint is at step 6 (checkpoint_every 3); step 7's record must be dropped on resume


def micro_config(cache_dir: Path, *overrides: str):
    """A model small enough that a whole run takes a few seconds on one CPU thread."""
    config = {
        "model": {"variant": "mac", "dim": 32, "depth": 1, "heads": 2, "mlp_hidden": 64, "memory_expansion": 2,
                  "chunk_size": 8, "segment_len": 16, "persistent_tokens": 2},
        "data": {"seq_len": 32, "cache_dir": str(cache_dir)},
        "train": {"steps": STEPS, "batch_size": 4, "warmup_steps": 2, "log_every": 1, "eval_every": 4,
                  "eval_batches": 1, "checkpoint_every": 3},
        "eval": {"batch_size": 4, "max_batches": 1},
    }  # fmt: skip
    return load_run_config(config, list(overrides))


@pytest.fixture(autouse=True)
def one_thread():
    """One thread per test process: exact comparisons need fixed reduction orders, and the CPUs are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def train_records(run_dir: Path, split: str = "train") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def test_resumed_run_matches_uninterrupted_run(tmp_path, monkeypatch):
    config = micro_config(tmp_path / "cache")
    straight = train(config, tmp_path / "straight", progress=False, final_eval=False)
    assert straight.steps == STEPS

    real_set_learning_rate = trainer_module.set_learning_rate

    def crash_at_step(optimizer, step, train_cfg):
        if step == CRASH_AFTER:
            raise KeyboardInterrupt("simulated crash")
        return real_set_learning_rate(optimizer, step, train_cfg)

    monkeypatch.setattr(trainer_module, "set_learning_rate", crash_at_step)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", progress=False, final_eval=False)
    assert ckpt.checkpoint_step(tmp_path / "resumed" / "last") == 6
    assert [r["step"] for r in train_records(tmp_path / "resumed")] == list(range(1, CRASH_AFTER + 1))
    monkeypatch.setattr(trainer_module, "set_learning_rate", real_set_learning_rate)

    train(config, tmp_path / "resumed", resume=True, progress=False, final_eval=False)

    expected, resumed = train_records(tmp_path / "straight"), train_records(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1)), "records after the checkpoint are not doubled"
    assert [r["loss"] for r in resumed] == [r["loss"] for r in expected]
    assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in expected]
    assert [r["loss"] for r in train_records(tmp_path / "resumed", "valid")] == [
        r["loss"] for r in train_records(tmp_path / "straight", "valid")
    ]
    for name in (ckpt.LAST, ckpt.BEST):
        a = ckpt.read_weights(tmp_path / "straight" / name)
        b = ckpt.read_weights(tmp_path / "resumed" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[key], b[key]) for key in a), f"{name} weights differ"


@pytest.fixture
def finished_run(tmp_path):
    config = micro_config(tmp_path / "cache", "train.steps=3", "train.eval_every=3")
    run_dir = tmp_path / "run"
    train(config, run_dir, progress=False, final_eval=False)
    return config, run_dir


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


@pytest.mark.parametrize("crash_in", ["weights", "trainer_state"])
def test_crash_during_save_keeps_previous_checkpoint(finished_run, monkeypatch, crash_in):
    config, run_dir = finished_run
    last = run_dir / ckpt.LAST
    before = _snapshot(last)
    new_model = TitansLM(config.model)

    def write_half_then_fail(*args, **kwargs):
        target = args[1]  # save_file(tensors, path, ...) / torch.save(obj, file)
        if hasattr(target, "write"):
            target.write(b"half a file")
        else:
            Path(target).write_bytes(b"half a file")
        raise OSError("No space left on device (simulated)")

    if crash_in == "weights":
        monkeypatch.setattr(ckpt, "save_file", write_half_then_fail)
    else:
        monkeypatch.setattr(ckpt.torch, "save", write_half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save_checkpoint(last, new_model.state_dict(), config, step=99, trainer_state={"step": 99})
    monkeypatch.undo()

    assert _snapshot(last) == before, "the previous checkpoint changed"
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == [], "temporary files left behind"
    model = TitansLM(config.model)
    ckpt.load_model_weights(last, model, config.model)
    assert ckpt.load_trainer_state(last)["step"] == 3


def test_interrupted_swap_falls_back_on_previous_folder(finished_run):
    """A crash between the two renames of a save leaves only ``.last.old``: it is still found and resumable."""
    config, run_dir = finished_run
    (run_dir / ckpt.LAST).rename(run_dir / ".last.old")
    assert ckpt.find_checkpoint(run_dir, ckpt.LAST) == run_dir / ".last.old"
    resumed = train(micro_config(config.data.cache_dir, "train.steps=4"), run_dir, resume=True, progress=False,
                    final_eval=False)  # fmt: skip
    assert resumed.steps == 4
    assert ckpt.checkpoint_step(run_dir / ckpt.LAST) == 4
    assert not (run_dir / ".last.old").exists()


def test_checkpoint_round_trip_with_tied_embeddings(tmp_path):
    config = micro_config(tmp_path, "model.tie_embeddings=true")
    model = TitansLM(config.model)
    ckpt.save_checkpoint(tmp_path / "ckpt", model.state_dict(), config, step=0)
    assert "lm_head.weight" not in ckpt.read_weights(tmp_path / "ckpt")  # stored once, as embed.weight
    loaded = TitansLM(config.model)
    ckpt.load_model_weights(tmp_path / "ckpt", loaded, config.model)
    assert loaded.lm_head.weight is loaded.embed.weight
    assert torch.equal(loaded.embed.weight, model.embed.weight)
    shutil.rmtree(tmp_path / "ckpt")
