"""The titan-min pipeline (``titans.tasks.pipeline``), the position model and the model export, on tiny settings."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from titans.models import TitansLM
from titans.tasks.checkpoints import TaskCheckpointError, resolve_init_checkpoint
from titans.tasks.export_model import compare_with_model, export_position_model, fixed_shape_batches
from titans.tasks.needle import NeedleExample, collate_needle_batch
from titans.tasks.pipeline import build_position_model, load_needle_run, run_pipeline
from titans.tasks.position_model import NeedlePositionModel, exportable_copy
from titans.tasks.run_config import TaskRunConfig, build_run_config
from titans.tasks.scoring import score_needle_predictions
from titans.tasks.task_data import needle_test_set

TINY_MODEL = ["model.dim=16", "model.heads=2", "model.mlp_hidden=32", "model.chunk_size=8", "model.segment_len=16"]
TINY_MODEL += ["model.window=16", "model.persistent_tokens=2", "model.memory_expansion=1"]
TINY_RUN = [
    *TINY_MODEL,
    "data.lengths=[16,24,32]",
    "data.num_samples=60",
    "train.steps=4",
    "train.eval_every=2",
    "train.log_every=1",
    "train.batch_size=8",
    "train.device=cpu",
    "eval.batch_size=16",
    "eval.export_batch_size=4",
]


def tiny_config(task: str = "needle", variant: str = "transformer", *extra: str) -> TaskRunConfig:
    return build_run_config(task, variant=variant, overrides=[*TINY_RUN, *extra])


def test_pipeline_end_to_end(tmp_path: Path) -> None:
    """One tiny pipeline run (CPU), then every artifact, the report, the checkpoint and the export checked."""
    out = tmp_path / "run"
    config = tiny_config()
    report = run_pipeline(config, out, echo=False)
    _check_artifacts(out, report)
    _check_report(out, config, report)
    _check_checkpoint(out, config)
    _check_export_without_project(out, config, tmp_path)


def _check_artifacts(out: Path, report: dict) -> None:
    expected = [
        "config.yaml",
        "checkpoints/best.safetensors",
        "checkpoints/last.safetensors",
        "metrics.jsonl",
        "train.log",
        "report.json",
        "predictions.csv",
        "figures/training_curve.png",
        "figures/accuracy_by_length.png",
        "figures/accuracy_by_position.png",
        "figures/length_position_heatmap.png",
        "export/model.ts",
        "export/export.json",
    ]
    for name in expected:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("train_loss" in r for r in records) and any("val_accuracy" in r for r in records)
    assert report["export"]["check"]["predictions_equal"] and report["export"]["check"]["logits_close"]
    assert set(report["by_length"]) == {"16", "24", "32"}
    assert len(report["by_position_bin"]) == 5


def _check_report(out: Path, config: TaskRunConfig, report: dict) -> None:
    """predictions.csv has the titan-min columns, and report.json is the shared scorer's output on it."""
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["idx", "length", "needle_pos_true", "needle_pos_pred"]
    test = needle_test_set(config.data)
    assert [int(r["length"]) for r in rows] == test.lengths.tolist()
    assert [int(r["needle_pos_true"]) for r in rows] == test.targets.tolist()
    predictions = [int(r["needle_pos_pred"]) for r in rows]
    assert all(0 <= p < int(r["length"]) for p, r in zip(predictions, rows))  # never a padded position
    score = score_needle_predictions(predictions, test.targets, test.lengths)
    saved = json.loads((out / "report.json").read_text())
    for key in ("accuracy", "num_correct", "num_samples", "by_length", "by_position_bin"):
        assert report[key] == score[key] == saved[key]


def _check_checkpoint(out: Path, config: TaskRunConfig) -> None:
    """The best checkpoint reloads (config.yaml + safetensors) and predicts what predictions.csv says."""
    loaded_config, model = load_needle_run(out, "best")
    assert loaded_config.model == config.model
    batch = collate_needle_batch(list(needle_test_set(config.data)))
    with (out / "predictions.csv").open() as handle:
        expected = [int(r["needle_pos_pred"]) for r in csv.DictReader(handle)]
    assert model.predict(batch.input_ids, batch.attention_mask).tolist() == expected


# ------------------------------------------------------------------------------------------------ export

_LOAD_WITHOUT_PROJECT = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoProject(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "titans" or name.startswith("titans."):
                raise ImportError("the project's classes must not be needed")

    sys.meta_path.insert(0, NoProject())
    import torch

    model_path, fmt, inputs_path, output_path = sys.argv[1:]
    input_ids, attention_mask = torch.load(inputs_path)
    module = torch.jit.load(model_path) if fmt == "torchscript" else torch.export.load(model_path).module()
    with torch.no_grad():
        torch.save(module(input_ids, attention_mask), output_path)
    assert not any(name.split(".")[0] == "titans" for name in sys.modules)
    """
)


def _run_without_project(
    model_path: Path, fmt: str, inputs: tuple[torch.Tensor, torch.Tensor], tmp: Path
) -> torch.Tensor:
    script, inputs_path, output_path = tmp / "load.py", tmp / "inputs.pt", tmp / "outputs.pt"
    script.write_text(_LOAD_WITHOUT_PROJECT)
    torch.save(inputs, inputs_path)
    subprocess.run(
        [sys.executable, str(script), str(model_path), fmt, str(inputs_path), str(output_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return torch.load(output_path)


def _check_export_without_project(out: Path, config: TaskRunConfig, tmp: Path) -> None:
    """The exported model, loaded by torch alone in a fresh interpreter, agrees with the best checkpoint."""
    manifest = json.loads((out / "export" / "export.json").read_text())
    _, model = load_needle_run(out, "best")
    test = needle_test_set(config.data)
    input_ids, attention_mask, rows = fixed_shape_batches(test, manifest["batch_size"], manifest["length"])[0]
    exported = _run_without_project(
        out / "export" / manifest["file"], manifest["format"], (input_ids, attention_mask), tmp
    )
    with torch.no_grad():
        reference = exportable_copy(model)(input_ids, attention_mask)
    assert torch.equal(exported.argmax(-1)[:rows], reference.argmax(-1)[:rows])
    torch.testing.assert_close(exported[attention_mask], reference[attention_mask], rtol=1e-4, atol=1e-4)
    assert bool((exported[~attention_mask] == torch.finfo(exported.dtype).min).all())


@pytest.mark.parametrize(
    ("variant", "head", "fmt"), [("mac", "final", "torchscript"), ("transformer", "local", "torch.export")]
)
def test_export_formats_agree_with_the_model(variant: str, head: str, fmt: str, tmp_path: Path) -> None:
    config = tiny_config("needle", variant, f"head.kind={head}")
    model = build_position_model(config, torch.device("cpu"))
    test = needle_test_set(config.data)
    manifest = export_position_model(model, tmp_path, fmt, batch_size=2, length=32)
    assert (tmp_path / manifest["file"]).is_file()
    check = compare_with_model(model, tmp_path, test, atol=1e-4)
    assert check["predictions_equal"] and check["logits_close"], check


# ------------------------------------------------------------------------------------------------ position model


def _examples(lengths: list[int], seed: int = 0) -> list[NeedleExample]:
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for length in lengths:
        ids = torch.randint(1, 127, (length,), generator=generator)
        target = int(torch.randint(0, length, (1,), generator=generator))
        ids[target] = 127
        examples.append(NeedleExample(ids.numpy(), target))
    return examples


@pytest.mark.parametrize("variant", ["mac", "lmm", "swa"])
@pytest.mark.parametrize("head", ["local", "final"])
def test_padding_never_matters_and_is_never_picked(variant: str, head: str) -> None:
    config = tiny_config("needle", variant, f"head.kind={head}")
    torch.manual_seed(0)
    model = NeedlePositionModel(config.model, config.head.kind, config.head.uses_positions).eval()
    examples = _examples([5, 12, 19])
    batch = collate_needle_batch(examples)
    with torch.no_grad():
        logits = model(batch.input_ids, batch.attention_mask)
        scrambled = batch.input_ids.masked_fill(~batch.attention_mask, 5)  # padding content must not matter
        assert torch.equal(model(scrambled, batch.attention_mask), logits)
        for row, example in enumerate(examples):
            alone = collate_needle_batch([example])
            single = model(alone.input_ids, alone.attention_mask)[0]
            n = example.length
            torch.testing.assert_close(logits[row, :n], single, rtol=1e-4, atol=1e-4)
    lowest = torch.finfo(logits.dtype).min
    assert bool((logits[~batch.attention_mask] == lowest).all())
    assert bool((logits.argmax(-1) < batch.lengths).all())


def test_reading_in_pieces_matches_one_call() -> None:
    config = tiny_config("needle-hard", "mac")
    torch.manual_seed(0)
    model = NeedlePositionModel(config.model, "final", positions=True).eval()
    batch = collate_needle_batch(_examples([40, 29]))
    with torch.no_grad():
        whole = model(batch.input_ids, batch.attention_mask)
        pieces = model(batch.input_ids, batch.attention_mask, piece_len=7)
    torch.testing.assert_close(pieces, whole, rtol=1e-4, atol=1e-4)


def test_unknown_head_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown position head"):
        NeedlePositionModel(tiny_config().model, "middle")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ init checkpoints


def _write_train_checkpoint(root: Path, model: TitansLM) -> Path:
    """A checkpoint laid out like ``titans train``'s: ``last/model.safetensors`` + ``last/config.yaml``."""
    import yaml

    folder = root / "last"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": model.config.to_dict(), "train": {"steps": 1}}))
    return root


def test_needle_model_starts_from_a_language_model_checkpoint(tmp_path: Path) -> None:
    lm_config = tiny_config("sniah-1", "mac").model
    torch.manual_seed(3)
    run = _write_train_checkpoint(tmp_path / "lm", TitansLM(lm_config))
    files = resolve_init_checkpoint(run)
    assert files.weights.name == "model.safetensors"
    config = build_run_config("needle", overrides=TINY_RUN, init_checkpoint=str(run), init_model=lm_config)
    model = build_position_model(config, torch.device("cpu"))
    expected = TitansLM(lm_config)
    expected.load_state_dict(_state(files.weights))
    for name, tensor in expected.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], tensor), name


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_missing_checkpoints_are_reported_clearly(tmp_path: Path) -> None:
    with pytest.raises(TaskCheckpointError, match="checkpoint not found"):
        resolve_init_checkpoint(tmp_path / "nowhere")
    with pytest.raises(TaskCheckpointError, match="no checkpoint in"):
        resolve_init_checkpoint(tmp_path)
    with pytest.raises(TaskCheckpointError, match="checkpoint not found"):
        load_needle_run(tmp_path / "missing")
