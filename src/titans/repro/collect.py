"""Gather the results of a suite's run folders into one ``results.json``.

Per run it reads ``repro.json`` (the run record: command, device, commit, seed, wall time, parameters),
``config.yaml`` (the whole run config), ``eval.json`` (held-out bits per byte, overall and by position) and
``metrics.jsonl`` (validation curve, tokens per second). Runs without a folder are listed as ``not run``;
nothing is measured for them, and only what their config fixes is filled in (sizes, data, budget).
The file (``format: titans-repro-results/1``)::

    {"format": ..., "suite": {"name", "description", "file", "metric_split"}, "out_dir", "generated_at",
     "commit", "dirty", "unit",
     "runs": [{"name", "label", "status": "done" | "failed" | "incomplete" | "not run", "error",
               "command", "config_file", "overrides", "config", "variant", "parameters",
               "non_embedding_parameters", "data": {"path", "tokenizer", "seq_len"}, "position_buckets" (labels,
               from the config), "steps", "batch_size",
               "train_tokens", "seed", "device", "device_name", "precision", "commit", "dirty",
               "started_at", "finished_at", "wall_time_s", "train_time_s", "tokens_per_s",
               "peak_memory_gib", "unit", "bits" (the metric split's bits per byte), "valid_bits",
               "eval": {split: {"bits", "loss", "tokens", "step", "by_position"}},
               "validation_curve": [{"step", "tokens", "bits"}]}]}

Only ``json`` is needed to read it back (see ``notebooks/analysis.ipynb``).
"""

from __future__ import annotations

import json
import math
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from titans.config_io import ConfigError, load_config, to_dict
from titans.repro.runner import (
    RECORD_FILE,
    command_string,
    display_path,
    git_commit,
    parameter_counts,
    read_record,
    run_commands,
)
from titans.repro.suite import PlannedRun, Suite
from titans.training.config import RunConfig

RESULTS_FILE = "results.json"
FORMAT = "titans-repro-results/1"

# Copied from the run record into the results, when present.
_RECORD_KEYS = (
    "command", "config_file", "overrides", "parameters", "non_embedding_parameters", "seed", "device",
    "device_name", "precision", "threads", "torch", "python", "commit", "dirty", "resumed", "started_at",
    "finished_at", "wall_time_s", "train_time_s", "peak_memory_gib", "error",
)  # fmt: skip


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    from titans.training.metrics import read_metrics

    return read_metrics(path)


def _number(value: Any) -> float | None:
    """A finite float, else None (metrics files write NaN as a string)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def median_tokens_per_s(records: list[dict[str, Any]]) -> float | None:
    """The median training throughput over the logged windows, leaving out the first window (start-up,
    compilation) when there are others."""
    rates = [r for r in (_number(x.get("tokens_per_s")) for x in records if x.get("split") == "train") if r]
    if len(rates) > 1:
        rates = rates[1:]
    return statistics.median(rates) if rates else None


def validation_curve(records: list[dict[str, Any]], tokens_per_step: int | None) -> list[dict[str, Any]]:
    """``{step, tokens, bits}`` of every validation record (tokens: training tokens seen at that step)."""
    curve = []
    for record in records:
        if record.get("split") != "valid":
            continue
        step = int(record.get("step", 0))
        curve.append(
            {"step": step, "tokens": None if tokens_per_step is None else step * tokens_per_step,
             "bits": _number(record.get("bits"))}
        )  # fmt: skip
    return curve


def bucket_labels(buckets: list[int]) -> list[str]:
    """The labels that ``eval.json`` gives the position buckets of a config: ``[0, 1024, 4096]`` →
    ``["0–1K", "1K–4K", "4K+"]`` (as :mod:`titans.training.evaluate` writes them)."""

    def short(n: int) -> str:
        return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)

    ends: list[int | None] = [*buckets[1:], None]
    return [f"{short(start)}+" if end is None else f"{short(start)}–{short(end)}" for start, end in zip(buckets, ends)]


def _eval_entries(evaluation: Any) -> dict[str, Any]:
    if not isinstance(evaluation, dict):
        return {}
    entries = {}
    for split, result in evaluation.items():
        if not isinstance(result, dict):
            continue
        entries[split] = {
            "unit": result.get("unit"),
            "bits": _number(result.get("bits")),
            "loss": _number(result.get("loss")),
            "tokens": result.get("tokens"),
            "step": result.get("step"),
            "by_position": result.get("by_position"),
        }
    return entries


def _parameters(config: dict[str, Any]) -> dict[str, int | None]:
    """Parameter counts of a run config (None when it no longer loads)."""
    try:
        return dict(parameter_counts(load_config(RunConfig, config)))
    except (ConfigError, ValueError, TypeError):
        return {"parameters": None, "non_embedding_parameters": None}


def _status(run_dir: Path, record: dict[str, Any] | None) -> str:
    if record is not None and record.get("status") in ("done", "failed"):
        return str(record["status"])
    return "incomplete" if (run_dir / "config.yaml").is_file() else "not run"


def collect_run(run: PlannedRun, metric_split: str) -> dict[str, Any]:
    """One run's entry of ``results.json`` (mostly None for a run that has not run)."""
    record = read_record(run.run_dir) or {}
    status = _status(run.run_dir, record or None)
    config = _read_yaml(run.run_dir / "config.yaml")
    config = config if isinstance(config, dict) else None
    if config is None and status == "not run":  # the planned config: sizes and budget, no measurement
        config = to_dict(run.load_config())
    entry: dict[str, Any] = {
        "name": run.name,
        "label": run.label,
        "notes": run.notes,
        "status": status,
        "run_dir": display_path(run.run_dir),
        "config_file": None if run.config_file is None else display_path(run.config_file),
        "overrides": list(run.overrides),
        "command": command_string(run_commands(run, metric_split)),
    }
    for key in _RECORD_KEYS:  # the record's values; the planned config file and overrides when it has none
        if key in record or key not in entry:
            entry[key] = record.get(key)
    entry["config"] = config
    model = (config or {}).get("model") or {}
    data = (config or {}).get("data") or {}
    train = (config or {}).get("train") or {}
    seq_len, batch_size, steps = data.get("seq_len"), train.get("batch_size"), train.get("steps")
    tokens_per_step = seq_len * batch_size if isinstance(seq_len, int) and isinstance(batch_size, int) else None
    evaluation_config = (config or {}).get("eval") or {}
    entry.update(
        variant=model.get("variant"),
        position_buckets=bucket_labels(evaluation_config.get("position_buckets") or []),
        data={"path": data.get("path") or "bundled sample corpus", "tokenizer": data.get("tokenizer"),
              "seq_len": seq_len} if config else None,
        steps=steps,
        batch_size=batch_size,
        train_tokens=tokens_per_step * steps if tokens_per_step and isinstance(steps, int) else None,
    )  # fmt: skip
    if entry.get("seed") is None and config:
        entry["seed"] = train.get("seed")
    if entry.get("parameters") is None and config:
        entry.update(_parameters(config))
    evaluation = _eval_entries(_read_json(run.run_dir / "eval.json"))
    metrics = _read_metrics(run.run_dir / "metrics.jsonl")
    headline = evaluation.get(metric_split) or {}
    entry.update(
        unit=headline.get("unit") or (evaluation.get("valid") or {}).get("unit"),
        bits=headline.get("bits"),
        valid_bits=(evaluation.get("valid") or {}).get("bits"),
        tokens_per_s=median_tokens_per_s(metrics),
        eval=evaluation,
        validation_curve=validation_curve(metrics, tokens_per_step),
    )
    return entry


def collect_results(suite: Suite, out_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The results of every run of ``suite`` under ``out_dir`` (see the module docstring for the layout)."""
    runs = [collect_run(run, suite.spec.metric_split) for run in suite.plan(out_dir, list(overrides))]
    commit, dirty = git_commit()
    units = [run["unit"] for run in runs if run.get("unit")]
    return {
        "format": FORMAT,
        "suite": {
            "name": suite.name,
            "description": suite.spec.description.strip(),
            "file": display_path(suite.path),
            "metric_split": suite.spec.metric_split,
        },
        "out_dir": display_path(out_dir),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "dirty": dirty,
        "unit": units[0] if units else "bits_per_byte",
        "runs": runs,
    }


def write_results(results: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``OUT/results.json`` (atomically) and return its path."""
    from titans.training.checkpoint import atomic_write

    path = Path(out_dir) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, allow_nan=True) + "\n"
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))
    return path


__all__ = ["FORMAT", "RECORD_FILE", "RESULTS_FILE", "collect_results", "collect_run", "write_results"]
