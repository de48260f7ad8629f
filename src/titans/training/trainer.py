"""The training loop, top to bottom: data → model → optimizer → steps (with validation and checkpoints) → eval.

One optimizer step of global batch ``step`` (a pure function of the seed and the step, see
:class:`titans.data.TrainBatches`):

1. This process takes rows ``rank::world_size`` of the batch; its micro batch ``i`` of ``A`` is rows ``i::A``.
2. The number of counted labels in the *global* batch is summed over the processes first, so every micro
   batch's backward pass can use ``sum of token losses × world_size / global tokens``. DDP and FSDP average
   gradients over the processes, so the gradient is exactly that of the mean token loss over the global
   batch, however it is split over processes and micro batches.
3. Clip the global gradient norm, set the learning rate (linear warm-up, then cosine down to
   ``lr × min_lr_ratio``; a pure function of the step), AdamW step.

Checkpoints (``last`` every ``checkpoint_every`` steps, ``best`` at every new lowest validation loss) hold the
weights, optimizer, step and RNG states, so ``--resume`` continues with bit-identical losses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from titans.config_io import ConfigError
from titans.data import IGNORE_INDEX, Batch, PackedDataset, TrainBatches, iter_eval_batches
from titans.models import TitansLM, count_parameters
from titans.training import checkpoint as ckpt
from titans.training.config import RunConfig, TrainConfig
from titans.training.corpus import packed_rows, run_tokenizer, tokenized_split
from titans.training.cuda_graph import CudaGraphedPass
from titans.training.distributed import (
    DistributedContext,
    all_reduce_sum,
    barrier,
    full_model_state,
    full_optimizer_state,
    is_sharded,
    load_optimizer_state,
    set_gradient_sync,
    setup,
    teardown,
    unwrap,
    wrap_model,
)
from titans.training.evaluate import LossTotal, bits_unit, heldout_loss, summed_token_loss
from titans.training.metrics import METRICS_FILE, MetricsLogger, truncate_metrics
from titans.training.precision import autocast, uses_bf16


@dataclass
class TrainResult:
    """What a finished run leaves behind (also on disk in the run folder)."""

    run_dir: Path
    steps: int
    first_val_loss: float | None
    last_val_loss: float | None
    best_val_loss: float | None
    elapsed_s: float
    eval_result: dict[str, Any] | None = None


# ============================================================================================ entry point


def train(
    config: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True, final_eval: bool = True
) -> TrainResult:
    """Train ``config`` into ``run_dir`` (one process, or one of the processes that ``torchrun`` started).

    ``resume`` continues from ``run_dir/last``. At the end, rank 0 evaluates the best checkpoint on the
    validation split (``eval.json``, plots) unless ``final_eval`` is False.
    """
    context = setup(config.train.device)
    try:
        result = _train(config, Path(run_dir), resume, progress, context)
    finally:
        teardown()
    if final_eval and context.is_main:
        from titans.training.evaluate import evaluate_run

        result.eval_result = evaluate_run(result.run_dir, "valid", device=str(context.device))
    return result


# ============================================================================================ the loop


def _train(config: RunConfig, run_dir: Path, resume: bool, progress: bool, context: DistributedContext) -> TrainResult:
    train_cfg = config.train
    plan = plan_batches(train_cfg, context.world_size)
    check_cuda_graph(train_cfg, context)

    # ---- data: global batch `step` is a pure function of (seed, step); this process takes its rows
    train_rows, valid_rows = load_training_data(config)
    last_checkpoint = prepare_run_dir(run_dir, config, resume, context)
    batches = TrainBatches(train_rows, train_cfg.batch_size, train_cfg.seed, context.rank, context.world_size)

    # ---- model (weights from the checkpoint when resuming, before any sharding)
    torch.manual_seed(train_cfg.seed)
    model = TitansLM(config.model).to(context.device)
    saved: dict[str, Any] = {}
    if last_checkpoint is not None:
        ckpt.load_model_weights(last_checkpoint, model, config.model)
        saved = ckpt.load_trainer_state(last_checkpoint)
    wrapped = wrap_model(model, context, train_cfg.fsdp)
    optimizer = build_optimizer(model, train_cfg)
    if saved:
        load_optimizer_state(wrapped, optimizer, saved["optimizer"])
        ckpt.restore_rng_state(saved["rng"])
    runner: nn.Module = torch.compile(wrapped) if train_cfg.compile else wrapped  # type: ignore[assignment]
    forward_backward = micro_batch_pass(runner, config, context)

    start_step = int(saved.get("step", 0))
    best_val = saved.get("best_val_loss")
    first_val = saved.get("first_val_loss")
    last_val: float | None = None
    elapsed_before = float(saved.get("elapsed_s", 0.0))
    tokens_per_step = train_cfg.batch_size * config.data.seq_len
    unit_name = bits_unit(config.data).replace("_", " ")
    logger = _open_logger(run_dir, config, context)
    if context.is_main:
        _print_header(model, config, plan, context, train_rows, start_step)

    def validate(step: int) -> float:
        total = validation_loss(wrapped, valid_rows, config, context)
        if logger is not None:
            logger.log({"split": "valid", "step": step, "loss": total.loss, "bits": total.bits,
                        "unit": bits_unit(config.data), "tokens": total.tokens})  # fmt: skip
        return total.loss

    def save(step: int, directory: str, val_loss: float | None, with_state: bool) -> None:
        weights = full_model_state(wrapped)  # every rank takes part (FSDP gathers the shards)
        state = None
        if with_state:
            elapsed = elapsed_before + time.time() - started
            state = _trainer_state(wrapped, optimizer, step, best_val, first_val, elapsed)
        if context.is_main:
            ckpt.save_checkpoint(run_dir / directory, weights, config, step, val_loss, state)
        barrier(context)

    started = time.time()
    if start_step == 0:
        first_val = last_val = validate(0)
        if context.is_main:
            print(f"step 0: validation {first_val / math.log(2):.4f} {unit_name}")
    bar = tqdm(total=train_cfg.steps, initial=start_step, disable=not (progress and context.is_main),
               desc="training", unit="step", dynamic_ncols=True)  # fmt: skip
    window = _LogWindow(time.time())
    try:
        for step in range(start_step, train_cfg.steps):
            lr = set_learning_rate(optimizer, step, train_cfg)
            stats = train_step(runner, forward_backward, optimizer, batches.batch(step), plan, context, config)
            done = step + 1
            window.add(stats)
            bar.update(1)
            if done % train_cfg.log_every == 0 or done == train_cfg.steps:
                record = window.flush(done, lr, done * tokens_per_step, tokens_per_step)
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:,.0f}")
                if logger is not None:
                    logger.log(record)
            if done % train_cfg.eval_every == 0 or done == train_cfg.steps:
                last_val = validate(done)
                if context.is_main:
                    bar.write(f"step {done}: validation {last_val / math.log(2):.4f} {unit_name}")
                if best_val is None or last_val < best_val:
                    best_val = last_val
                    save(done, ckpt.BEST, last_val, with_state=False)
            if done % train_cfg.checkpoint_every == 0 or done == train_cfg.steps:
                save(done, ckpt.LAST, last_val, with_state=True)
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    elapsed = elapsed_before + time.time() - started
    return TrainResult(run_dir, train_cfg.steps, first_val, last_val, best_val, elapsed)


# ============================================================================================ one step


@dataclass(frozen=True)
class BatchPlan:
    """How the global batch is cut: rows per process, rows per forward pass, forward passes per step."""

    local_batch: int
    micro_batch: int
    accumulation: int


def plan_batches(train_cfg: TrainConfig, world_size: int) -> BatchPlan:
    """Split ``train.batch_size`` over ``world_size`` processes and micro batches, or raise ConfigError."""
    if train_cfg.batch_size % world_size:
        raise ConfigError(f"config key 'train.batch_size' ({train_cfg.batch_size}) must be divisible by the "
                          f"number of processes ({world_size})")  # fmt: skip
    local = train_cfg.batch_size // world_size
    micro = train_cfg.micro_batch_size or local
    if micro > local or local % micro:
        raise ConfigError(f"config key 'train.micro_batch_size' ({micro}) must divide the rows per process "
                          f"({local} = batch_size {train_cfg.batch_size} / {world_size} processes)")  # fmt: skip
    return BatchPlan(local, micro, local // micro)


@dataclass
class StepStats:
    """The mean token loss of one global batch (a 0-d tensor, not yet synchronised) and the gradient norm."""

    loss: torch.Tensor
    grad_norm: torch.Tensor


MicroBatchPass = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def micro_batch_pass(model: nn.Module, config: RunConfig, context: DistributedContext) -> MicroBatchPass:
    """The forward and backward pass of one micro batch: ``(input_ids, labels, loss_scale)`` → its summed token
    loss (detached), the backward pass taken of ``loss × loss_scale``; with ``train.cuda_graph``, one CUDA graph
    per micro-batch shape (:class:`~titans.training.cuda_graph.CudaGraphedPass`)."""
    graphed = config.train.cuda_graph
    precision, device = config.train.precision, context.device

    def run(input_ids: torch.Tensor, labels: torch.Tensor, loss_scale: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device, cache=not graphed):
            logits = model(input_ids).logits
        token_loss = summed_token_loss(logits, labels)
        (token_loss * loss_scale).backward()
        return token_loss.detach()

    return CudaGraphedPass(unwrap(model), run) if graphed else run  # type: ignore[arg-type]


def check_cuda_graph(train_cfg: TrainConfig, context: DistributedContext) -> None:
    """``train.cuda_graph`` needs one process on a CUDA device (else ConfigError, before anything is written)."""
    if not train_cfg.cuda_graph:
        return
    if context.device.type != "cuda":
        raise ConfigError(f"config key 'train.cuda_graph' needs a CUDA device; this run is on {context.device}")
    if context.world_size > 1:
        raise ConfigError(f"config key 'train.cuda_graph' supports one process; this run has {context.world_size}")


def train_step(
    model: nn.Module,
    forward_backward: MicroBatchPass,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    plan: BatchPlan,
    context: DistributedContext,
    config: RunConfig,
) -> StepStats:
    """Forward/backward over this process's micro batches (``forward_backward``: :func:`micro_batch_pass`), clip,
    and one optimizer step.

    Micro batch ``i`` of ``A`` takes this process's rows ``i::A``. Process ``r`` of ``W`` holds the global
    rows ``r::W``, so its micro batch ``i`` holds the global rows ``r + W·i :: W·A``: exactly micro batch
    ``r + W·i`` of one process that accumulates ``W·A`` micro batches. Every micro batch's forward and
    backward pass is therefore the same computation, whatever the number of processes.
    """
    device = context.device
    input_ids, labels = batch.input_ids.to(device), batch.labels.to(device)
    local_tokens = (labels != IGNORE_INDEX).sum()
    global_tokens = all_reduce_sum(local_tokens, context).clamp(min=1)
    loss_scale = (context.world_size / global_tokens.double()).float()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    for index in range(plan.accumulation):
        rows = slice(index, None, plan.accumulation)
        set_gradient_sync(model, enabled=index == plan.accumulation - 1)
        loss_sum += forward_backward(input_ids[rows], labels[rows], loss_scale).double()
    grad_norm = clip_gradients(model, config.train.grad_clip)
    step_if_finite(optimizer, grad_norm, keep_grads=config.train.cuda_graph)
    return StepStats(all_reduce_sum(loss_sum, context) / global_tokens.double(), grad_norm)


def step_if_finite(optimizer: torch.optim.Optimizer, grad_norm: torch.Tensor, keep_grads: bool = False) -> bool:
    """One optimizer step, skipped (as AMP's GradScaler does) when the gradient norm is inf or NaN, so one bad
    batch cannot turn the weights into NaN; the skip shows as a non-finite ``grad_norm`` in the metrics. Clears
    the gradients either way — zeroed in place with ``keep_grads`` (a CUDA graph writes into them), else dropped.
    Costs one host sync per step."""
    finite = bool(torch.isfinite(grad_norm))
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=not keep_grads)
    return finite


def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Scale the gradients to a global norm of at most ``max_norm`` (0: no clipping); return the norm before."""
    limit = max_norm if max_norm > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(unwrap(model).parameters(), limit)
    full_tensor = getattr(norm, "full_tensor", None)  # a DTensor under FSDP
    return full_tensor() if callable(full_tensor) else norm


# ============================================================================================ optimizer


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices (ndim ≥ 2), none on norms, biases, gate biases, the token
    embedding and the persistent tokens (learned token vectors, like the embedding)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in unwrap(model).named_parameters():
        if not param.requires_grad:
            continue
        is_token_table = name.startswith("embed.") or "persistent_tokens" in name
        (decay if param.ndim >= 2 and not is_token_table else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, train_cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW (decoupled weight decay) over :func:`parameter_groups`."""
    return torch.optim.AdamW(
        parameter_groups(model, train_cfg.weight_decay), lr=train_cfg.lr, betas=train_cfg.betas, eps=train_cfg.eps
    )


def learning_rate(step: int, train_cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps`` to ``lr``, then a cosine down to ``lr × min_lr_ratio`` at the end."""
    if step < train_cfg.warmup_steps:
        return train_cfg.lr * (step + 1) / train_cfg.warmup_steps
    min_lr = train_cfg.lr * train_cfg.min_lr_ratio
    progress = (step - train_cfg.warmup_steps) / max(1, train_cfg.steps - train_cfg.warmup_steps)
    return min_lr + 0.5 * (train_cfg.lr - min_lr) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_learning_rate(optimizer: torch.optim.Optimizer, step: int, train_cfg: TrainConfig) -> float:
    lr = learning_rate(step, train_cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


# ============================================================================================ helpers


def load_training_data(config: RunConfig) -> tuple[PackedDataset, PackedDataset]:
    """The train and validation splits, tokenized (cached) and packed into rows of ``data.seq_len``."""
    tokenizer = run_tokenizer(config)
    train = packed_rows(tokenized_split(config, "train", tokenizer), config.data.seq_len)
    valid = packed_rows(tokenized_split(config, "valid", tokenizer), config.data.seq_len)
    return train, valid


def validation_loss(model: nn.Module, rows: PackedDataset, config: RunConfig, context: DistributedContext) -> LossTotal:
    """The loss over ``train.eval_batches`` evenly spread validation batches, summed over the processes.

    Each process takes every ``world_size``-th batch; under FSDP every process runs every batch (the forward
    passes gather parameters together), and only rank 0's share is counted.
    """
    batches = iter_eval_batches(rows, config.eval.batch_size, config.train.eval_batches)
    sharded = is_sharded(model)
    evaluated = model if sharded else unwrap(model)
    mine = batches if sharded else islice(batches, context.rank, None, context.world_size)
    evaluated.eval()
    total = heldout_loss(evaluated, mine, context.device, config.train.precision)
    evaluated.train()
    counted = total if (not sharded or context.is_main) else LossTotal()
    sums = torch.tensor([counted.nats, float(counted.tokens)], dtype=torch.float64, device=context.device)
    nats, tokens = all_reduce_sum(sums, context).tolist()
    return LossTotal(nats, int(tokens))


def _trainer_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    best_val: float | None,
    first_val: float | None,
    elapsed_s: float,
) -> dict[str, Any]:
    return {
        "step": step,
        "optimizer": full_optimizer_state(model, optimizer),
        "rng": ckpt.capture_rng_state(),
        "best_val_loss": best_val,
        "first_val_loss": first_val,
        "elapsed_s": elapsed_s,
    }


def prepare_run_dir(run_dir: Path, config: RunConfig, resume: bool, context: DistributedContext) -> Path | None:
    """Create the run folder (rank 0) and return the checkpoint to resume from, if any.

    A folder with a ``last`` checkpoint is only reused with ``resume`` (which needs that checkpoint); the
    metrics of a run that stopped before its first checkpoint are discarded.
    """
    last = ckpt.find_checkpoint(run_dir, ckpt.LAST)
    if resume and last is None:
        raise FileNotFoundError(f"cannot resume: no checkpoint in {run_dir / ckpt.LAST}")
    if not resume and last is not None:
        raise FileExistsError(
            f"{run_dir} already holds a training run (checkpoint at step {ckpt.checkpoint_step(last)}); "
            "pass --resume to continue it, or --out DIR for a new run"
        )
    if last is not None:
        ckpt.check_model_config(last, config.model)
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.save_run_config(config, run_dir)
        if last is None:
            (run_dir / METRICS_FILE).unlink(missing_ok=True)
        else:
            truncate_metrics(run_dir / METRICS_FILE, ckpt.checkpoint_step(last))
    barrier(context)
    return last


def _open_logger(run_dir: Path, config: RunConfig, context: DistributedContext) -> MetricsLogger | None:
    if not context.is_main:
        return None
    from titans.config_io import to_dict

    train_cfg = config.train
    return MetricsLogger(run_dir, train_cfg.tensorboard, train_cfg.wandb, to_dict(config), train_cfg.wandb_project)


class _LogWindow:
    """Step losses since the last metrics record, for its mean loss and tokens per second."""

    def __init__(self, now: float):
        self.started = now
        self.steps: list[StepStats] = []

    def add(self, stats: StepStats) -> None:
        self.steps.append(stats)

    def flush(self, step: int, lr: float, tokens_seen: int, tokens_per_step: int) -> dict[str, Any]:
        now = time.time()
        losses = [float(s.loss) for s in self.steps]
        record = {
            "split": "train",
            "step": step,
            "loss": sum(losses) / len(losses),
            "lr": lr,
            "grad_norm": float(self.steps[-1].grad_norm),
            "tokens": tokens_seen,
            "tokens_per_s": len(losses) * tokens_per_step / max(now - self.started, 1e-9),
        }
        self.started, self.steps = now, []
        return record


def _print_header(
    model: nn.Module, config: RunConfig, plan: BatchPlan, context: DistributedContext, rows: PackedDataset, start: int
) -> None:
    train_cfg = config.train
    precision = "bf16 autocast" if uses_bf16(train_cfg.precision, context.device) else "fp32"
    tokens = rows.data.num_tokens
    print(f"model: {config.model.variant}, {count_parameters(model):,} parameters "
          f"(dim {config.model.dim}, depth {config.model.depth})")  # fmt: skip
    print(f"data: {rows.data.source} — {tokens:,} training tokens, {len(rows):,} rows of {config.data.seq_len}")
    print(f"batch: {train_cfg.batch_size} rows = {context.world_size} process(es) × {plan.accumulation} micro "
          f"batch(es) × {plan.micro_batch}; device {context.device}, {precision}"
          + (f"; resuming at step {start}" if start else ""))  # fmt: skip
