"""Training for ``titans task train``: a small generic loop, and language-model fine-tuning on S-NIAH/BABILong.

The loop (:func:`run_training`) is AdamW with linear warm-up and cosine decay, gradient clipping, a
validation every ``train.eval_every`` steps (and at the last step) that keeps the best weights
(``checkpoints/best.safetensors``) and the last ones (``checkpoints/last.safetensors``), and logs to
``metrics.jsonl`` (one JSON object per line) and ``train.log``.

Text tasks (:func:`train_text_task`) train a :class:`~titans.models.TitansLM` with the language-model loss on
the *answer tokens only*: a sample is ``prompt_ids + answer_ids``, and only positions that predict an answer
token carry a label. Batches are right-padded (id 0, no label); the model is causal, so padding after the
answer changes nothing before it.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from titans.config_io import save_config
from titans.models import TitansConfig, TitansLM
from titans.models.lm import IGNORE_INDEX
from titans.tasks.checkpoints import (
    BEST_FILE,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LAST_FILE,
    backbone_tensors,
    load_weights,
    read_weights,
    resolve_init_checkpoint,
    save_weights,
)
from titans.tasks.run_config import LossOn, TaskRunConfig, TaskTrainConfig
from titans.tasks.task_data import TextSample, text_samples

METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"


# ------------------------------------------------------------------------------------------------ plumbing


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available, else the CPU; anything else as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but CUDA is not available")
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast for ``"bf16"`` (and ``"auto"`` on CUDA); a no-op otherwise."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class RunLog:
    """``train.log`` (timestamped lines, echoed to stdout when ``echo``) and ``metrics.jsonl`` of a run."""

    def __init__(self, out_dir: str | Path, echo: bool = True):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self.log_path = self.out_dir / LOG_FILE
        self.metrics_path = self.out_dir / METRICS_FILE
        self._start = time.time()

    def info(self, message: str) -> None:
        """Append a line to ``train.log`` (and print it)."""
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')} +{time.time() - self._start:7.1f}s] {message}"
        with self.log_path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        if self.echo:
            print(line, flush=True)

    def metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON record to ``metrics.jsonl``."""
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def reset(self) -> None:
        """Start both files afresh (a new run in an old folder)."""
        for path in (self.log_path, self.metrics_path):
            path.unlink(missing_ok=True)


def learning_rate_factor(step: int, train: TaskTrainConfig) -> float:
    """Multiplier of ``train.lr`` at ``step`` (0-based): linear warm-up, then cosine down to ``min_lr_ratio``."""
    if step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    span = max(1, train.steps - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / span)
    return train.min_lr_ratio + (1 - train.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, train: TaskTrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms, biases, gates' biases)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train.lr, betas=(0.9, 0.95))


def index_batches(num_items: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless batches of indices: a fresh permutation every epoch (last partial batch dropped if possible)."""
    if num_items < 1:
        raise ValueError("cannot draw batches from an empty training set")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(num_items)
        stop = num_items - num_items % batch_size if num_items >= batch_size else num_items
        for start in range(0, stop, batch_size):
            yield order[start : start + batch_size]


# ------------------------------------------------------------------------------------------------ the loop


@dataclass
class TrainResult:
    """What a training run did: steps, the best step and its validation record, wall time."""

    steps: int
    best_step: int
    best_validation: dict[str, float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "best_step": self.best_step,
            "best_validation": self.best_validation,
            "seconds": round(self.seconds, 2),
        }


LossFn = Callable[[nn.Module, np.ndarray], Tensor]
ValidateFn = Callable[[nn.Module], dict[str, float]]


def run_training(
    model: nn.Module,
    config: TaskRunConfig,
    out_dir: Path,
    num_train: int,
    loss_fn: LossFn,
    validate: ValidateFn,
    log: RunLog,
    metadata: dict[str, Any],
) -> TrainResult:
    """Train ``model`` (already on its device) for ``config.train.steps`` steps.

    Args:
        model: the model.
        config: the run config (``train`` section used).
        out_dir: the run folder (``checkpoints/`` is written inside).
        num_train: training set size (batches are index arrays into it).
        loss_fn: ``loss_fn(model, indices)`` → scalar loss of that batch.
        validate: ``validate(model)`` → metrics with a ``"score"`` (higher is better) for the best checkpoint.
        log: where to log.
        metadata: stored in every checkpoint (task, model config, ...).
    """
    train = config.train
    optimizer = make_optimizer(model, train)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, train))
    batches = index_batches(num_train, train.batch_size, train.seed)
    best: dict[str, float] = {}
    best_step, start = -1, time.time()
    for step in range(1, train.steps + 1):
        model.train()
        loss = loss_fn(model, next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = _clip(model, train.grad_clip)
        optimizer.step()
        schedule.step()
        if step % train.log_every == 0 or step == 1:
            record = {"step": step, "train_loss": float(loss.detach()), "lr": schedule.get_last_lr()[0]}
            log.metrics({**record, "grad_norm": grad_norm, "seconds": round(time.time() - start, 2)})
            log.info(f"step {step}/{train.steps} loss {record['train_loss']:.4f} lr {record['lr']:.2e}")
        if step % train.eval_every == 0 or step == train.steps:
            metrics = _validate(model, validate)
            log.metrics({"step": step, **{f"val_{key}": value for key, value in metrics.items()}})
            log.info("validation " + " ".join(f"{key} {value:.4f}" for key, value in metrics.items()))
            if not best or metrics["score"] > best["score"]:
                best, best_step = metrics, step
                save_weights(out_dir / CHECKPOINT_DIR / BEST_FILE, model, {**metadata, "step": str(step)})
                log.info(f"new best at step {step} (score {metrics['score']:.4f})")
    save_weights(out_dir / CHECKPOINT_DIR / LAST_FILE, model, {**metadata, "step": str(train.steps)})
    return TrainResult(train.steps, best_step, best, time.time() - start)


def _clip(model: nn.Module, max_norm: float) -> float:
    parameters = [p for p in model.parameters() if p.grad is not None]
    if not parameters:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm if max_norm > 0 else float("inf"))
    return float(norm)


def _validate(model: nn.Module, validate: ValidateFn) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        metrics = validate(model)
    if "score" not in metrics:
        raise KeyError("the validation function must return a 'score'")
    return metrics


def write_run_config(config: TaskRunConfig, out_dir: Path) -> Path:
    """``out_dir/config.yaml``: the full run config (its ``model`` section is the backbone's TitansConfig)."""
    return save_config(config, out_dir / CONFIG_FILE)


def checkpoint_metadata(config: TaskRunConfig) -> dict[str, Any]:
    """What every checkpoint of a task run records in its safetensors metadata."""
    return {
        "task": config.data.task,
        "model_config": json.dumps(config.model.to_dict()),
        "head": config.head.kind if config.data.spec.is_needle else "",
    }


# ------------------------------------------------------------------------------------------------ text tasks


def init_backbone(model: TitansLM, checkpoint: str | None, log: RunLog | None = None) -> None:
    """Load the language-model weights of ``checkpoint`` (any form :func:`resolve_init_checkpoint` accepts)."""
    if checkpoint is None:
        return
    files = resolve_init_checkpoint(checkpoint)
    tensors, _ = read_weights(files.weights)
    load_weights(model, backbone_tensors(tensors), files.weights)
    if log is not None:
        log.info(f"initialised the backbone from {files.weights}")


def language_model_batch(
    samples: Sequence[TextSample], pad_id: int = 0, loss_on: LossOn = "answer"
) -> tuple[Tensor, Tensor]:
    """``(input_ids, labels)`` (B, T): prompt + answer, right-padded; labels where an answer token is next
    (``loss_on="answer"``) or wherever any token of the sample is next (``"all"``), never on the padding."""
    sequences = [list(sample.prompt_ids) + list(sample.answer_ids) for sample in samples]
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    for row, (sample, sequence) in enumerate(zip(samples, sequences)):
        tokens = torch.tensor(sequence, dtype=torch.long)
        input_ids[row, : len(sequence)] = tokens
        first = 1 if loss_on == "all" else len(sample.prompt_ids)
        labels[row, first - 1 : len(sequence) - 1] = tokens[first:]  # position t predicts token t + 1
    return input_ids, labels


def _lm_loss(
    model: nn.Module, samples: Sequence[TextSample], device: torch.device, precision: str, loss_on: LossOn = "answer"
) -> Tensor:
    input_ids, labels = language_model_batch(samples, loss_on=loss_on)
    with autocast(device, precision):
        output = model(input_ids.to(device), labels=labels.to(device))
    assert output.loss is not None
    return output.loss


def _text_validation(
    samples: Sequence[TextSample], batch_size: int, device: torch.device, precision: str
) -> ValidateFn:
    def validate(model: nn.Module) -> dict[str, float]:
        losses = [
            float(_lm_loss(model, samples[start : start + batch_size], device, precision))
            for start in range(0, len(samples), batch_size)
        ]
        loss = float(np.mean(losses))
        return {"loss": loss, "score": -loss}

    return validate


def build_language_model(config: TitansConfig, device: torch.device, seed: int) -> TitansLM:
    """A fresh :class:`TitansLM` of ``config`` on ``device`` (initialised from ``seed``)."""
    torch.manual_seed(seed)
    return TitansLM(config).to(device)


def train_text_task(config: TaskRunConfig, out_dir: str | Path, echo: bool = True) -> TrainResult:
    """Fine-tune (or train from scratch) a language model on an S-NIAH or BABILong task.

    Writes ``config.yaml``, ``checkpoints/{best,last}.safetensors`` (best = lowest validation loss on the
    answer tokens), ``metrics.jsonl``, ``train.log`` into ``out_dir``.
    """
    out = Path(out_dir)
    log = RunLog(out, echo)
    log.reset()
    device = resolve_device(config.train.device)
    write_run_config(config, out)
    model = build_language_model(config.model, device, config.train.seed)
    init_backbone(model, config.init_checkpoint, log)
    train_samples = text_samples(config.data, "train")
    # Without validation prompts (data.val_samples = 0) the first training prompts stand in for them.
    val_samples = text_samples(config.data, "validation") if config.data.val_samples else train_samples[:16]
    log.info(
        f"task {config.data.task}: {len(train_samples)} training and {len(val_samples)} validation prompts at "
        f"lengths {config.data.lengths}; model {config.model.variant} on {device}"
    )
    precision = config.train.precision

    def loss_fn(model: nn.Module, indices: np.ndarray) -> Tensor:
        return _lm_loss(model, [train_samples[int(i)] for i in indices], device, precision, config.train.loss_on)

    validate = _text_validation(val_samples, config.train.batch_size, device, precision)
    result = run_training(model, config, out, len(train_samples), loss_fn, validate, log, checkpoint_metadata(config))
    log.info(f"done: best step {result.best_step}, {result.seconds:.1f}s")
    return result


__all__ = [
    "LOG_FILE",
    "METRICS_FILE",
    "RunLog",
    "TrainResult",
    "autocast",
    "build_language_model",
    "checkpoint_metadata",
    "index_batches",
    "init_backbone",
    "language_model_batch",
    "learning_rate_factor",
    "make_optimizer",
    "resolve_device",
    "run_training",
    "train_text_task",
    "write_run_config",
]
