"""Train, evaluate and sample Titans language models: ``titans train | eval | generate``.

Typical use from Python::

    from titans.training import load_run_config, train

    config = load_run_config("configs/tiny.yaml", ["train.steps=100"])
    result = train(config, "runs/tiny")          # checkpoints, metrics.jsonl, eval.json, plots/

Modules: :mod:`~titans.training.config` (``RunConfig``), :mod:`~titans.training.trainer` (the loop),
:mod:`~titans.training.checkpoint` (atomic checkpoints, exact resume), :mod:`~titans.training.evaluate`
(bits per byte, by position), :mod:`~titans.training.generation`, :mod:`~titans.training.plots`,
:mod:`~titans.training.metrics` and :mod:`~titans.training.distributed` (torchrun, DDP, FSDP2).
"""

from titans.training.checkpoint import CheckpointError
from titans.training.config import DataConfig, EvalConfig, RunConfig, TrainConfig, load_run_config
from titans.training.evaluate import evaluate_run
from titans.training.generation import generate_text
from titans.training.trainer import TrainResult, train

__all__ = [
    "CheckpointError",
    "DataConfig",
    "EvalConfig",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "evaluate_run",
    "generate_text",
    "load_run_config",
    "train",
]
