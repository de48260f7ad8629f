"""Figures of task runs (PNG): training curve, accuracy by group, and the length × depth heatmap.

matplotlib is imported lazily, with the non-interactive ``Agg`` backend, so importing this module costs
nothing and works without a display.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from titans.plotting import pyplot, save_figure


def plot_training_curve(records: Iterable[Mapping[str, Any]], path: str | Path, title: str = "training") -> Path:
    """Training loss (left axis) and the validation metrics present (``val_accuracy``, ``val_loss``) by step."""
    plt = pyplot()
    rows = list(records)
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    if train:
        loss_axis.plot(*zip(*train), label="train loss", color="tab:blue")
    val_loss = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if val_loss:
        loss_axis.plot(*zip(*val_loss), "o-", label="validation loss", color="tab:orange")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss")
    loss_axis.set_yscale("log" if train and min(v for _, v in train) > 0 else "linear")
    accuracy = [(r["step"], r["val_accuracy"]) for r in rows if "val_accuracy" in r]
    handles, labels = loss_axis.get_legend_handles_labels()
    if accuracy:
        accuracy_axis = loss_axis.twinx()
        accuracy_axis.plot(*zip(*accuracy), "s-", color="tab:green", label="validation accuracy")
        accuracy_axis.set_ylim(-0.02, 1.02)
        accuracy_axis.set_ylabel("accuracy")
        more_handles, more_labels = accuracy_axis.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if handles:
        loss_axis.legend(handles, labels, loc="center right")
    loss_axis.set_title(title)
    return save_figure(figure, path)


def plot_accuracy_by_group(
    groups: Mapping[str, Mapping[str, Any]], path: str | Path, xlabel: str, title: str = "accuracy"
) -> Path:
    """A bar per group (``{"64": {"accuracy": 0.9, "num_samples": 300, ...}, ...}``), labelled with n."""
    plt = pyplot()
    names = list(groups)
    values = [groups[name].get("accuracy") for name in names]
    heights = [0.0 if value is None else float(value) for value in values]
    figure, axis = plt.subplots(figsize=(max(4.0, 0.8 * len(names) + 2), 3.6))
    bars = axis.bar(range(len(names)), heights, color="tab:blue")
    for bar, name, value in zip(bars, names, values):
        count = groups[name].get("num_samples", "")
        text = "n/a" if value is None else f"{float(value):.2f}\nn={count}"
        axis.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, text, ha="center", fontsize=8)
    axis.set_xticks(range(len(names)), names)
    axis.set_ylim(0, 1.15)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("accuracy")
    axis.set_title(title)
    return save_figure(figure, path)


def plot_heatmap(
    grid: Mapping[str, Mapping[str, float | None]],
    path: str | Path,
    row_label: str,
    column_label: str,
    title: str = "accuracy",
) -> Path:
    """``grid[row][column]`` accuracy as a red-to-green heatmap (rows: depths, columns: lengths, say).

    Missing cells (``None``) are left grey. Rows are drawn top to bottom in the mapping's order.
    """
    import numpy as np

    plt = pyplot()
    rows = list(grid)
    columns: list[str] = []
    for row in rows:
        columns.extend(column for column in grid[row] if column not in columns)
    values = np.full((len(rows), len(columns)), np.nan)
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            value = grid[row].get(column)
            if value is not None:
                values[i, j] = float(value)
    figure, axis = plt.subplots(figsize=(max(4.0, 0.9 * len(columns) + 2.5), max(3.0, 0.35 * len(rows) + 1.5)))
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="lightgrey")
    image = axis.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    _annotate(axis, values)
    axis.set_xticks(range(len(columns)), columns)
    axis.set_yticks(range(len(rows)), rows)
    axis.set_xlabel(column_label)
    axis.set_ylabel(row_label)
    axis.set_title(title)
    figure.colorbar(image, ax=axis, label="accuracy")
    return save_figure(figure, path)


def _annotate(axis: Any, values: Any) -> None:
    """Write each cell's value into it (small grids only)."""
    if values.size > 400:
        return
    rows, columns = values.shape
    for i in range(rows):
        for j in range(columns):
            if values[i, j] == values[i, j]:  # not NaN
                axis.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7)


__all__ = ["plot_accuracy_by_group", "plot_heatmap", "plot_training_curve"]
