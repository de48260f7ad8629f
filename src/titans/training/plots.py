"""PNG plots of a run: the training and validation curves, and bits per byte by position in long documents.

Matplotlib is imported inside the functions (Agg backend, no display needed), so ``import titans`` stays light.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from titans.plotting import pyplot, save_figure
from titans.training.metrics import METRICS_FILE, read_metrics

PLOTS_DIR = "plots"
CURVES_FILE = "loss_curves.png"


def _unit_label(unit: str) -> str:
    return unit.replace("_", " ")


def plot_training_curves(records: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss (light) and validation loss (bold) against the step, in bits; None without records."""
    train = [r for r in records if r.get("split") == "train"]  # float(): "nan"/"inf" are written as strings
    valid = [r for r in records if r.get("split") == "valid"]
    if not train and not valid:
        return None
    unit = next((r["unit"] for r in records if "unit" in r), "bits_per_token")
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    if train:
        axes.plot([r["step"] for r in train], [float(r["loss"]) / math.log(2) for r in train], label="train", alpha=0.6)
    if valid:
        axes.plot([r["step"] for r in valid], [float(r["bits"]) for r in valid], "o-", label="validation", linewidth=2)
    axes.set_xlabel("step")
    axes.set_ylabel(_unit_label(unit))
    axes.set_title("Training and validation loss")
    axes.grid(True, alpha=0.3)
    axes.legend()
    return save_figure(figure, path)


def plot_position_curve(result: dict[str, Any], path: Path, train_seq_len: int | None = None) -> Path | None:
    """Bits per byte (or token) by position inside long documents, state carried from piece to piece."""
    positions = result.get("by_position") or {}
    curve = positions.get("curve") or []
    if not curve:
        return None
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    centres = [(point["start"] + point["end"]) / 2 for point in curve]
    axes.plot(
        centres, [point["bits"] for point in curve], ".-", alpha=0.7, label=f"per piece of {positions['piece_len']}"
    )
    last_position = max(point["end"] for point in curve)
    for bucket in positions.get("buckets", []):
        end = last_position if bucket["end"] is None else min(bucket["end"], last_position)
        axes.hlines(bucket["bits"], max(bucket["start"], 1), end, colors="C1", linewidth=2.5)
    axes.plot([], [], color="C1", linewidth=2.5, label="bucket mean")
    if train_seq_len:
        axes.axvline(train_seq_len, color="gray", linestyle="--", label=f"training length {train_seq_len}")
    axes.set_xscale("log")
    axes.set_xlabel("position in document (tokens)")
    axes.set_ylabel(_unit_label(result.get("unit", "bits_per_token")))
    axes.set_title(f"Loss by position ({result.get('split', '')}, {positions['documents']} document(s))")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    return save_figure(figure, path)


def draw_run_plots(run_dir: Path) -> list[Path]:
    """Every plot that the files of ``run_dir`` allow, written to ``run_dir/plots/``; returns their paths."""
    out_dir = run_dir / PLOTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path | None] = []
    metrics_path = run_dir / METRICS_FILE
    if metrics_path.is_file():
        written.append(plot_training_curves(read_metrics(metrics_path), out_dir / CURVES_FILE))
    eval_path = run_dir / "eval.json"
    if eval_path.is_file():
        seq_len = _training_seq_len(run_dir)
        for split, result in json.loads(eval_path.read_text(encoding="utf-8")).items():
            written.append(plot_position_curve(result, out_dir / f"bits_by_position_{split}.png", seq_len))
    return [path for path in written if path is not None]


def _training_seq_len(run_dir: Path) -> int | None:
    import yaml

    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        return None
    data = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    seq_len = (data.get("data") or {}).get("seq_len")
    return seq_len if isinstance(seq_len, int) else None
