"""The titan-min pipeline and the needle tasks' train / eval steps, plus the text tasks' pipeline.

``run_pipeline(config, out)`` does, for the needle tasks, everything into one folder::

    out/config.yaml                       the run config (model section = the backbone's TitansConfig)
    out/checkpoints/best.safetensors      best validation accuracy
    out/checkpoints/last.safetensors      after the last step
    out/metrics.jsonl, out/train.log      training records and log
    out/report.json                       test accuracy overall, by length, by position bin
                                          (score_needle_predictions), a length × position grid, training
                                          summary and the export check
    out/predictions.csv                   idx,length,needle_pos_true,needle_pos_pred
    out/figures/*.png                     training curve, accuracy by length, by position bin, heatmap
    out/export/model.ts + export.json     the exported model (TorchScript, or model.pt2 from torch.export)

For the text tasks the pipeline is: fine-tune, then evaluate with greedy decoding (no export).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from titans.config_io import load_config, read_yaml
from titans.models import TitansLM, count_parameters
from titans.tasks.checkpoints import (
    BEST_FILE,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LAST_FILE,
    TaskCheckpointError,
    backbone_tensors,
    load_weights,
    read_model_config,
    read_weights,
    resolve_init_checkpoint,
)
from titans.tasks.evaluate import (
    FIGURES_DIR,
    PREDICTIONS_FILE,
    REPORT_FILE,
    accuracy_grid,
    decode_samples,
    text_report,
    write_csv,
    write_json,
    write_text_evaluation,
)
from titans.tasks.export_model import EXPORT_DIR, compare_with_model, export_position_model
from titans.tasks.finetune import (
    METRICS_FILE,
    RunLog,
    TrainResult,
    autocast,
    checkpoint_metadata,
    resolve_device,
    run_training,
    train_text_task,
    write_run_config,
)
from titans.tasks.needle import NeedleDataset, collate_needle_batch
from titans.tasks.plots import plot_accuracy_by_group, plot_heatmap, plot_training_curve
from titans.tasks.position_model import NeedlePositionModel
from titans.tasks.run_config import TaskRunConfig
from titans.tasks.scoring import NEEDLE_POSITION_BIN_EDGES, position_bin_label, score_needle_predictions
from titans.tasks.task_data import load_text_samples, needle_datasets, needle_test_set, text_samples
from titans.tokenizer import load_tokenizer

NEEDLE_COLUMNS = ("idx", "length", "needle_pos_true", "needle_pos_pred")


# ------------------------------------------------------------------------------------------------ models


def build_position_model(config: TaskRunConfig, device: torch.device) -> NeedlePositionModel:
    """A fresh needle model of ``config`` (seeded by ``train.seed``), optionally initialised from
    ``config.init_checkpoint`` (a needle run: all weights; a language model: the backbone)."""
    torch.manual_seed(config.train.seed)
    model = NeedlePositionModel(config.model, config.head.kind, config.head.uses_positions)
    if config.init_checkpoint is not None:
        files = resolve_init_checkpoint(config.init_checkpoint)
        tensors, _ = read_weights(files.weights)
        if any(name.startswith("backbone.") for name in tensors) and _same_head(model, tensors):
            load_weights(model, tensors, files.weights)
        else:
            load_weights(model.backbone, backbone_tensors(tensors), files.weights)
    return model.to(device)


def _same_head(model: nn.Module, tensors: dict[str, Tensor]) -> bool:
    """Whether ``tensors`` hold a head (and position projection) of the same shapes as ``model``'s."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items() if not name.startswith("backbone.")}
    found = {name: tuple(t.shape) for name, t in tensors.items() if not name.startswith("backbone.")}
    return expected == found


def is_task_run(path: str | Path) -> bool:
    """Whether ``path`` is a ``titans task train`` folder (``config.yaml`` and ``checkpoints/``)."""
    root = Path(path)
    return (root / CONFIG_FILE).is_file() and (root / CHECKPOINT_DIR).is_dir()


def read_run_config(run_dir: str | Path) -> TaskRunConfig:
    """The :class:`TaskRunConfig` of a task run folder."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise TaskCheckpointError(
            f"checkpoint not found: {path} is missing (is {run_dir} a 'titans task train' folder?)"
        )
    return load_config(TaskRunConfig, read_yaml(path))


def run_weights(run_dir: str | Path, which: str = "best") -> Path:
    """``checkpoints/best.safetensors`` (or ``last``) of a task run; clear error when absent."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    path = Path(run_dir) / CHECKPOINT_DIR / (BEST_FILE if which == "best" else LAST_FILE)
    if not path.is_file():
        raise TaskCheckpointError(f"checkpoint not found: {path}")
    return path


def load_needle_run(
    run_dir: str | Path, which: str = "best", device: str = "cpu"
) -> tuple[TaskRunConfig, NeedlePositionModel]:
    """The config and the trained needle model of a task run folder."""
    config = read_run_config(run_dir)
    if not config.data.spec.is_needle:
        raise ValueError(f"{run_dir} is a {config.data.task} run, not a needle run")
    model = NeedlePositionModel(config.model, config.head.kind, config.head.uses_positions)
    weights = run_weights(run_dir, which)
    load_weights(model, read_weights(weights)[0], weights)
    return config, model.to(resolve_device(device)).eval()


def load_language_model(path: str | Path, which: str = "best", device: str = "cpu") -> TitansLM:
    """A :class:`TitansLM` from a text task run folder, or from any checkpoint ``--init-checkpoint`` takes."""
    if is_task_run(path):
        config = read_run_config(path)
        weights = run_weights(path, which)
        model_config = config.model
    else:
        files = resolve_init_checkpoint(path)
        weights, model_config = files.weights, read_model_config(files.config)
    model = TitansLM(model_config)
    load_weights(model, backbone_tensors(read_weights(weights)[0]), weights)
    return model.to(resolve_device(device)).eval()


# ------------------------------------------------------------------------------------------------ needle steps


def _needle_logits(
    model: nn.Module, dataset: NeedleDataset, indices: Any, device: torch.device, config: TaskRunConfig
) -> tuple[Tensor, Tensor]:
    batch = collate_needle_batch([dataset[int(i)] for i in indices]).to(device)
    piece = None if model.training else config.eval.piece_len
    with autocast(device, config.train.precision):
        logits = model(batch.input_ids, batch.attention_mask, piece)
    return logits.float(), batch.targets


def needle_loss(
    model: nn.Module, dataset: NeedleDataset, indices: Any, device: torch.device, config: TaskRunConfig
) -> Tensor:
    """Cross-entropy over positions (padded positions carry no probability) against the needle index."""
    logits, targets = _needle_logits(model, dataset, indices, device, config)
    return F.cross_entropy(logits, targets)


@torch.no_grad()
def predict_needle(
    model: nn.Module, dataset: NeedleDataset, device: torch.device, config: TaskRunConfig
) -> tuple[np.ndarray, float]:
    """Predicted positions of every sample of ``dataset`` (in order) and the mean loss."""
    model.eval()
    predictions, losses = [], []
    size = config.eval.batch_size
    for start in range(0, len(dataset), size):
        indices = range(start, min(start + size, len(dataset)))
        logits, targets = _needle_logits(model, dataset, indices, device, config)
        predictions.append(logits.argmax(dim=-1).cpu())
        losses.append(float(F.cross_entropy(logits, targets, reduction="sum")))
    return torch.cat(predictions).numpy(), sum(losses) / len(dataset)


def train_needle(
    config: TaskRunConfig, out_dir: str | Path, echo: bool = True
) -> tuple[NeedlePositionModel, TrainResult]:
    """Train the needle model; writes ``config.yaml``, checkpoints, ``metrics.jsonl``, ``train.log`` and the
    training curve. Returns the model with its **best** weights loaded, and the training summary."""
    out = Path(out_dir)
    log = RunLog(out, echo)
    log.reset()
    device = resolve_device(config.train.device)
    write_run_config(config, out)
    splits = needle_datasets(config.data)
    model = build_position_model(config, device)
    log.info(
        f"task {config.data.task}: lengths {config.data.lengths}, {len(splits.train)}/{len(splits.validation)}/"
        f"{len(splits.test)} samples; {config.model.variant} backbone, {config.head.kind} head, "
        f"{count_parameters(model)} parameters, on {device}"
    )

    def loss_fn(model: nn.Module, indices: np.ndarray) -> Tensor:
        return needle_loss(model, splits.train, indices, device, config)

    def validate(model: nn.Module) -> dict[str, float]:
        predictions, loss = predict_needle(model, splits.validation, device, config)
        accuracy = float(np.mean(predictions == splits.validation.targets))
        return {"accuracy": accuracy, "loss": loss, "score": accuracy - 1e-5 * min(loss, 100.0)}

    result = run_training(model, config, out, len(splits.train), loss_fn, validate, log, checkpoint_metadata(config))
    log.info(f"done: best validation {result.best_validation} at step {result.best_step}, {result.seconds:.1f}s")
    plot_training_curve(_read_records(out / METRICS_FILE), out / FIGURES_DIR / "training_curve.png", config.data.task)
    best = run_weights(out, "best")
    load_weights(model, read_weights(best)[0], best)
    return model, result


def _read_records(path: Path) -> list[dict[str, Any]]:
    import json

    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def needle_report(
    dataset: NeedleDataset, predictions: np.ndarray, config: TaskRunConfig
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``report.json`` dict (shared scorer + length × position-bin grid) and the CSV rows."""
    lengths, targets = dataset.lengths, dataset.targets
    score = score_needle_predictions(predictions, targets, lengths)
    edges = NEEDLE_POSITION_BIN_EDGES
    bins = np.clip(np.searchsorted(edges, targets / lengths, side="right") - 1, 0, len(edges) - 2)
    labels = [position_bin_label(edges[b], edges[b + 1]) for b in bins]
    grid = accuracy_grid(labels, lengths.tolist(), (predictions == targets).tolist())
    report = {
        "task": config.data.task,
        "split": "test",
        "variant": config.model.variant,
        "head": config.head.kind,
        **score,
        "by_position_bin_and_length": grid,
    }
    rows = [
        {"idx": i, "length": int(n), "needle_pos_true": int(t), "needle_pos_pred": int(p)}
        for i, (n, t, p) in enumerate(zip(lengths, targets, predictions))
    ]
    return report, rows


def evaluate_needle(
    model: NeedlePositionModel,
    config: TaskRunConfig,
    out_dir: str | Path,
    dataset: NeedleDataset | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate on the test set (or ``dataset``); write ``report.json``, ``predictions.csv`` and figures."""
    out = Path(out_dir)
    device = next(model.parameters()).device
    dataset = needle_test_set(config.data) if dataset is None else dataset
    predictions, loss = predict_needle(model, dataset, device, config)
    report, rows = needle_report(dataset, predictions, config)
    report.update({"loss": loss, "num_parameters": count_parameters(model), **(extra or {})})
    write_json(out / REPORT_FILE, report)
    write_csv(out / PREDICTIONS_FILE, rows, NEEDLE_COLUMNS)
    figures = out / FIGURES_DIR
    title = f"{config.data.task} ({config.model.variant}, {config.head.kind} head)"
    plot_accuracy_by_group(report["by_length"], figures / "accuracy_by_length.png", "sequence length", title)
    plot_accuracy_by_group(
        report["by_position_bin"], figures / "accuracy_by_position.png", "needle position (% of length)", title
    )
    plot_heatmap(
        report["by_position_bin_and_length"], figures / "length_position_heatmap.png", "needle position",
        "sequence length", title,
    )  # fmt: skip
    return report


# ------------------------------------------------------------------------------------------------ pipelines


def run_needle_pipeline(config: TaskRunConfig, out_dir: str | Path, echo: bool = True) -> dict[str, Any]:
    """Train → evaluate (best checkpoint, test split) → export → check the export; returns the report."""
    out = Path(out_dir)
    model, result = train_needle(config, out, echo)
    test = needle_test_set(config.data)
    export: dict[str, Any] = {"format": "none"}
    if config.eval.export_format != "none":
        length = int(test.lengths.max())
        manifest = export_position_model(
            model, out / EXPORT_DIR, config.eval.export_format, config.eval.export_batch_size, length
        )
        export = {**manifest, "check": compare_with_model(model, out / EXPORT_DIR, test, atol=1e-3)}
    report = evaluate_needle(
        model, config, out, test, {"checkpoint": "best", "train": result.to_dict(), "export": export}
    )
    RunLog(out, echo).info(
        f"test accuracy {report['accuracy']:.4f}; by length "
        + ", ".join(f"{k}: {v['accuracy']:.3f}" for k, v in report["by_length"].items())
    )
    return report


def evaluate_text_model(
    model: TitansLM,
    config: TaskRunConfig,
    out_dir: str | Path,
    data_folder: str | Path | None = None,
    echo: bool = True,
) -> dict[str, Any]:
    """Greedy evaluation of a language model on the run's evaluation prompts (or those of ``data_folder``)."""
    samples = load_text_samples(data_folder) if data_folder is not None else text_samples(config.data, "eval")
    device = next(model.parameters()).device
    outputs = decode_samples(model, samples, load_tokenizer(config.data.tokenizer), config, device, echo)
    report, rows = text_report(config.data.spec, samples, outputs, config.data.data_dir)
    report["variant"] = config.model.variant
    write_text_evaluation(out_dir, report, rows, config.data.task)
    return report


def run_text_pipeline(config: TaskRunConfig, out_dir: str | Path, echo: bool = True) -> dict[str, Any]:
    """Fine-tune, then evaluate the best checkpoint with greedy decoding, into one folder."""
    out = Path(out_dir)
    result = train_text_task(config, out, echo)
    plot_training_curve(_read_records(out / METRICS_FILE), out / FIGURES_DIR / "training_curve.png", config.data.task)
    model = load_language_model(out, "best", config.train.device)
    report = evaluate_text_model(model, config, out, echo=echo)
    report["train"] = result.to_dict()
    write_json(out / REPORT_FILE, report)
    return report


def run_pipeline(config: TaskRunConfig, out_dir: str | Path, echo: bool = True) -> dict[str, Any]:
    """The whole pipeline of ``config.data.task`` into ``out_dir``; returns the report."""
    if config.data.spec.is_needle:
        return run_needle_pipeline(config, out_dir, echo)
    return run_text_pipeline(config, out_dir, echo)


__all__ = [
    "NEEDLE_COLUMNS",
    "build_position_model",
    "evaluate_needle",
    "evaluate_text_model",
    "is_task_run",
    "load_language_model",
    "load_needle_run",
    "needle_loss",
    "needle_report",
    "predict_needle",
    "read_run_config",
    "run_needle_pipeline",
    "run_pipeline",
    "run_text_pipeline",
    "train_needle",
]
