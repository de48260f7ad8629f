"""Metrics of a run: one JSON object per line in ``RUN/metrics.jsonl``, optionally mirrored to TensorBoard and
Weights & Biases (only when installed and asked for; never required).

Records have a ``split`` (``"train"`` or ``"valid"``) and a ``step`` (optimizer steps done). Training
records hold ``loss`` (nats per token, the mean over the global batch), ``lr``, ``grad_norm``, ``tokens``
(seen so far) and ``tokens_per_s``; validation records hold ``loss``, ``bits`` and ``unit``.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file (a torn last line, from a crash, is skipped)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop the records after ``last_step`` (written by a run that went on past its last checkpoint)."""
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


def _finite(value: Any) -> Any:
    """NaN and infinities as strings, so that every line is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogger:
    """Appends records to ``metrics.jsonl``; mirrors scalars to TensorBoard / W&B when enabled."""

    def __init__(self, run_dir: Path, tensorboard: bool = False, wandb: bool = False, wandb_config: Any = None,
                 wandb_project: str = "titans"):  # fmt: skip
        self.path = run_dir / METRICS_FILE
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._tensorboard = _open_tensorboard(run_dir) if tensorboard else None
        self._wandb = _open_wandb(run_dir, wandb_project, wandb_config) if wandb else None

    def log(self, record: dict[str, Any]) -> None:
        """Write one record (it must have ``split`` and ``step``)."""
        self._file.write(json.dumps({k: _finite(v) for k, v in record.items()}) + "\n")
        self._file.flush()
        scalars = {
            f"{record['split']}/{key}": value
            for key, value in record.items()
            if key not in ("split", "step") and isinstance(value, int | float)
        }
        if self._tensorboard is not None:
            for key, value in scalars.items():
                self._tensorboard.add_scalar(key, value, record["step"])
        if self._wandb is not None:
            self._wandb.log(scalars, step=record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


def _open_tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn(
            "train.tensorboard is on, but the tensorboard package is not installed; skipping it", stacklevel=3
        )
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _open_wandb(run_dir: Path, project: str, config: Any) -> Any:
    try:
        import wandb
    except ImportError:
        warnings.warn("train.wandb is on, but the wandb package is not installed; skipping it", stacklevel=3)
        return None
    return wandb.init(project=project, dir=str(run_dir), config=config, name=run_dir.name)
