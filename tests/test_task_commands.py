"""``titans task generate|train|eval|pipeline`` (``titans.tasks.commands``) on tiny settings."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from titans.config_io import ConfigError
from titans.models import TitansLM
from titans.tasks.commands import main, parse_lengths
from titans.tasks.data_files import data_file_available
from titans.tasks.export import read_jsonl
from titans.tasks.finetune import language_model_batch
from titans.tasks.run_config import build_run_config, get_task
from titans.tasks.scoring import score_sniah
from titans.tasks.sniah import generate_sniah_samples

TINY_MODEL = [
    "model.dim=16", "model.heads=2", "model.mlp_hidden=32", "model.chunk_size=16", "model.segment_len=32",
    "model.window=32", "model.persistent_tokens=2", "model.memory_expansion=1",
]  # fmt: skip


def _set(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


BABI_AVAILABLE = data_file_available("babi_tasks_1-20_v1-2_en.tar.xz")


# ------------------------------------------------------------------------------------------------ generate


def test_generate_needle_writes_splits(tmp_path: Path) -> None:
    assert main(["task", "generate", "needle", "--out", str(tmp_path), "--lengths", "8,16", "--num-samples", "20"]) == 0
    manifest = json.loads((tmp_path / "config.json").read_text())
    assert manifest["num_samples"] == {"train": 16, "validation": 2, "test": 2}
    records = read_jsonl(tmp_path / "test.jsonl")
    assert {r["length"] for r in read_jsonl(tmp_path / "train.jsonl")} <= {8, 16}
    assert all(r["input_ids"][r["target"]] == 127 for r in records)


def test_generate_sniah_writes_jsonl_per_length(tmp_path: Path) -> None:
    args = ["task", "generate", "sniah-1", "--out", str(tmp_path), "--lengths", "400", "450", "--num-samples", "3"]
    assert main([*args, "--depths", "0", "50", "100"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(f["target_length"] for f in manifest["files"]) == [400, 450]
    records = read_jsonl(tmp_path / "s_niah_1_400.jsonl")
    assert [r["depth_percent"] for r in records] == [0.0, 50.0, 100.0]  # cycled: balanced for the heatmap
    assert all(len(r["prompt_ids"]) + len(r["answer_ids"]) <= 400 for r in records)


@pytest.mark.skipif(not BABI_AVAILABLE, reason="bAbI archive not available")
def test_generate_babilong_without_background(tmp_path: Path) -> None:
    assert (
        main(["task", "generate", "babilong-qa1", "--out", str(tmp_path), "--lengths", "0", "--num-samples", "2"]) == 0
    )
    records = read_jsonl(tmp_path / "qa1_0.jsonl")
    assert len(records) == 2 and records[0]["prompt"].endswith("Answer:")


# ------------------------------------------------------------------------------------------------ needle


def test_train_then_eval_needle(tmp_path: Path) -> None:
    run, evaluation = tmp_path / "run", tmp_path / "eval"
    train = ["task", "train", "needle", "--variant", "lmm", "--out", str(run), "--lengths", "16", "24"]
    train += ["--num-samples", "40", "--steps", "2", "--batch-size", "8", "--device", "cpu", "--quiet"]
    assert main([*train, *_set(*TINY_MODEL, "train.eval_every=2")]) == 0
    assert (run / "checkpoints" / "best.safetensors").is_file() and (run / "figures" / "training_curve.png").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["variant"] == "lmm" and saved["data"]["lengths"] == [16, 24]
    args = ["task", "eval", "needle", "--checkpoint", str(run), "--out", str(evaluation), "--lengths", "20", "40"]
    assert main([*args, "--which", "last"]) == 0
    report = json.loads((evaluation / "report.json").read_text())
    assert set(report["by_length"]) == {"20", "40"} and report["num_samples"] == 4
    assert all(set(row) <= {"20", "40"} for row in report["by_position_bin_and_length"].values())
    with (evaluation / "predictions.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4
    for name in ("accuracy_by_length", "accuracy_by_position", "length_position_heatmap"):
        assert _is_png(evaluation / "figures" / f"{name}.png")


# ------------------------------------------------------------------------------------------------ text tasks


def test_language_model_batch_labels_only_the_answer() -> None:
    sample = generate_sniah_samples("s_niah_1", 400, 1)[0]
    input_ids, labels = language_model_batch([sample])
    prompt, answer = len(sample.prompt_ids), len(sample.answer_ids)
    labelled = (labels[0] != -100).nonzero().flatten().tolist()
    assert labelled == list(range(prompt - 1, prompt - 1 + answer))
    assert labels[0, prompt - 1 : prompt - 1 + answer].tolist() == sample.answer_ids
    assert input_ids[0, prompt : prompt + answer].tolist() == sample.answer_ids


def test_language_model_batch_labels_every_next_token_with_loss_on_all() -> None:
    short, long = generate_sniah_samples("s_niah_1", 400, 1)[0], generate_sniah_samples("s_niah_1", 420, 1)[0]
    input_ids, labels = language_model_batch([short, long], loss_on="all")
    for row, sample in enumerate((short, long)):
        sequence = list(sample.prompt_ids) + list(sample.answer_ids)
        assert labels[row, : len(sequence) - 1].tolist() == sequence[1:]  # position t predicts token t + 1
        assert (labels[row, len(sequence) - 1 :] == -100).all()  # the last token and the padding: no target
        assert input_ids[row, : len(sequence)].tolist() == sequence


def test_loss_on_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"train\.loss_on"):
        build_run_config("sniah-1", overrides=["train.loss_on=prompt"])


def test_train_then_eval_sniah_with_generated_data(tmp_path: Path) -> None:
    run, data, evaluation = tmp_path / "run", tmp_path / "data", tmp_path / "eval"
    train = ["task", "train", "sniah-1", "--variant", "swa", "--out", str(run), "--lengths", "400"]
    train += ["--num-samples", "4", "--steps", "2", "--batch-size", "2", "--device", "cpu", "--quiet"]
    assert main([*train, *_set(*TINY_MODEL, "data.val_samples=2", "train.eval_every=2")]) == 0
    generate = ["task", "generate", "sniah-1", "--out", str(data), "--lengths", "400", "420", "--num-samples", "2"]
    assert main(generate) == 0
    args = ["task", "eval", "sniah-1", "--checkpoint", str(run), "--out", str(evaluation), "--data", str(data)]
    assert main([*args, "--piece-len", "64", *_set("eval.max_new_tokens=3")]) == 0
    report = json.loads((evaluation / "report.json").read_text())
    assert report["num_samples"] == 4 and set(report["by_length"]) == {"400", "420"}
    with (evaluation / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and {"answer", "output", "correct", "depth_bin"} <= set(rows[0])
    assert _is_png(evaluation / "figures" / "accuracy_by_length.png")
    assert _is_png(evaluation / "figures" / "length_depth_heatmap.png")


def test_text_report_uses_the_shared_scorer() -> None:
    from titans.tasks.evaluate import text_report

    samples = generate_sniah_samples("s_niah_1", 400, 3)
    outputs = [f" {samples[0].answer}.", "nothing", f" {samples[2].answer}"]
    report, rows = text_report(get_task("sniah-1"), samples, outputs)
    expected = score_sniah(samples, outputs)
    assert report["accuracy"] == expected["accuracy"] == pytest.approx(2 / 3)
    assert [row["correct"] for row in rows] == [True, False, True]


def _write_lm_checkpoint(root: Path, overrides: list[str]) -> Path:
    """A ``titans train``-style checkpoint folder: ``model.safetensors`` + ``config.yaml`` (run config)."""
    config = build_run_config("sniah-1", overrides=overrides).model
    torch.manual_seed(0)
    model = TitansLM(config)
    root.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "model.safetensors"))
    (root / "config.yaml").write_text(yaml.safe_dump({"model": config.to_dict(), "data": {"seq_len": 64}}))
    return root


@pytest.mark.skipif(not BABI_AVAILABLE, reason="bAbI archive not available")
def test_eval_babilong_of_a_language_model_checkpoint(tmp_path: Path) -> None:
    checkpoint = _write_lm_checkpoint(tmp_path / "lm", TINY_MODEL)
    args = ["task", "eval", "babilong-qa1", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "eval")]
    assert main([*args, "--lengths", "0", "--num-samples", "2", "--device", "cpu", *_set("eval.max_new_tokens=2")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["task"] == "babilong-qa1" and report["num_samples"] == 2 and "0" in report["by_length"]


def test_fine_tune_starts_from_a_language_model_checkpoint(tmp_path: Path) -> None:
    checkpoint = _write_lm_checkpoint(tmp_path / "lm", [*TINY_MODEL, "model.variant=transformer"])
    run = tmp_path / "run"
    args = ["task", "train", "sniah-1", "--init-checkpoint", str(checkpoint), "--out", str(run), "--lengths", "400"]
    args += ["--num-samples", "2", "--steps", "1", "--device", "cpu", "--quiet", *_set("train.lr=1e-12")]
    assert main([*args, *_set("data.val_samples=1", "train.eval_every=1", "train.warmup_steps=0")]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["variant"] == "transformer" and saved["init_checkpoint"] == str(checkpoint)
    from safetensors.torch import load_file

    start, trained = (
        load_file(str(checkpoint / "model.safetensors")),
        load_file(str(run / "checkpoints" / "last.safetensors")),
    )
    assert torch.allclose(start["embed.weight"], trained["embed.weight"], atol=1e-6)  # lr ~ 0: the weights were loaded


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_task_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["task", "train", "needle-in-a-barn", "--out", "x"])
    assert exit_info.value.code == 2
    assert "needle-in-a-barn" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown task"):
        get_task("qa9")


def test_bad_lengths_and_settings_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["task", "generate", "needle", "--out", str(tmp_path), "--lengths", "0"]) == 2
    assert "bad lengths" in capsys.readouterr().err
    assert main(["task", "generate", "needle", "--out", str(tmp_path), "--lengths", "ten"]) == 2
    assert "not a token length" in capsys.readouterr().err
    assert main(["task", "train", "needle", "--out", str(tmp_path), *_set("train.stepz=3")]) == 2
    assert "train.steps" in capsys.readouterr().err  # the suggestion
    assert parse_lengths(["1K,2K", "64"]) == [1024, 2048, 64]
    with pytest.raises(ConfigError, match="vocab_size"):
        build_run_config("needle", overrides=["model.vocab_size=64"])
    with pytest.raises(ConfigError, match="unknown variant"):
        build_run_config("needle", variant="rnn")


def test_missing_checkpoint_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["task", "eval", "sniah-1", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "e")]
    assert main(args) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    lm = _write_lm_checkpoint(tmp_path / "lm", TINY_MODEL)
    assert main(["task", "eval", "needle", "--checkpoint", str(lm), "--out", str(tmp_path / "e")]) == 2
    assert "needs a 'titans task train needle' folder" in capsys.readouterr().err
    assert main(["task", "train", "needle", "--init-checkpoint", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no checkpoint in" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["needle", "needle-hard"])
def test_shipped_task_configs_load(name: str) -> None:
    path = Path(__file__).resolve().parents[1] / "configs" / "tasks" / f"{name}.yaml"
    config = build_run_config(name, variant="mac", config_file=path)
    assert config.data.task == name and config.model.variant == "mac"
    assert config.head.kind == ("local" if name == "needle" else "final")
