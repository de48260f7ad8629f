"""``RunConfig``: everything a training run needs — the model, the data, the optimisation and the evaluation.

A run config is a plain dataclass with four sections. It is read from YAML (``configs/*.yaml``) through
:func:`titans.config_io.load_config`, so an unknown key or a wrongly typed value raises
:class:`~titans.config_io.ConfigError` naming the dotted key::

    config = load_run_config("configs/tiny.yaml", ["model.depth=4", "train.lr=1e-3"])

Without a file, :func:`load_run_config` starts from :data:`TINY_CONFIG` (the same values as
``configs/tiny.yaml``): a small MAC model on the bundled sample corpus that trains in a few minutes on a CPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from titans.config_io import ConfigError, load_config
from titans.models import TitansConfig

Precision = Literal["auto", "fp32", "bf16"]

BYTE_TOKENIZER = "bytes"


@dataclass
class DataConfig:
    """Where the text comes from and how it is cut into training rows."""

    path: str | None = None  # a corpus (JSONL, text file, folder of .txt, enwik8); None: the bundled sample
    tokenizer: str = BYTE_TOKENIZER  # "bytes" or the path of a Hugging Face tokenizer.json
    seq_len: int = 256  # tokens per training row (the memory restarts at every row)
    cache_dir: str | None = None  # token cache; None: $TITANS_CACHE_DIR or ~/.cache/titans

    def validate(self) -> None:
        if self.seq_len < 1:
            raise ConfigError(f"config key 'data.seq_len' must be >= 1, got {self.seq_len}")
        if not self.tokenizer:
            raise ConfigError("config key 'data.tokenizer' must be 'bytes' or the path of a tokenizer.json")

    @property
    def uses_bytes(self) -> bool:
        """True for the byte tokenizer, whose bits per token are bits per byte."""
        return self.tokenizer == BYTE_TOKENIZER


@dataclass
class TrainConfig:
    """Optimisation (AdamW, warm-up + cosine), batching, precision, logging and checkpoint cadence."""

    steps: int = 300  # optimizer steps
    batch_size: int = 16  # global batch in rows, summed over processes and gradient-accumulation steps
    micro_batch_size: int | None = None  # rows per forward pass on one process; None: the whole local batch
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 30  # linear warm-up from lr / warmup_steps to lr
    weight_decay: float = 0.1  # decoupled (AdamW); matrices only (see trainer.parameter_groups)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    precision: Precision = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile the model
    cuda_graph: bool = False  # each micro batch's forward + backward as one CUDA graph (one GPU; cuda_graph.py)
    fsdp: bool = False  # shard parameters with FSDP2 (fully_shard) instead of DistributedDataParallel
    log_every: int = 10  # steps between metrics.jsonl records of the training loss
    eval_every: int = 100  # steps between validation losses (and at step 0 and the last step)
    eval_batches: int = 8  # batches of eval.batch_size rows per periodic validation
    checkpoint_every: int = 100  # steps between "last" checkpoints (and at the last step)
    tensorboard: bool = False  # also log to TensorBoard (needs the tensorboard package)
    wandb: bool = False  # also log to Weights & Biases (needs the wandb package)
    wandb_project: str = "titans"

    def validate(self) -> None:
        positive = ("steps", "batch_size", "log_every", "eval_every", "eval_batches", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"config key 'train.{name}' must be >= 1, got {getattr(self, name)}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ConfigError(f"config key 'train.micro_batch_size' must be >= 1, got {self.micro_batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"config key 'train.lr' must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"config key 'train.min_lr_ratio' must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0:
            raise ConfigError(f"config key 'train.warmup_steps' must be >= 0, got {self.warmup_steps}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("config keys 'train.weight_decay' and 'train.grad_clip' must be >= 0")
        if self.cuda_graph and (self.compile or self.fsdp):
            other = "train.compile" if self.compile else "train.fsdp"
            raise ConfigError(f"config key 'train.cuda_graph' cannot be combined with '{other}'")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ConfigError(f"config key 'train.betas' must lie in [0, 1), got {self.betas}")


@dataclass
class EvalConfig:
    """Held-out evaluation: the loss over the split and the loss by position inside long documents."""

    batch_size: int = 16  # rows per batch for the held-out loss
    max_batches: int | None = None  # batches for the final / `titans eval` held-out loss; None: all rows
    position_buckets: list[int] = field(default_factory=lambda: [0, 1024, 4096, 16384, 65536])
    num_documents: int = 4  # the longest held-out documents used for the loss by position
    max_document_len: int = 65536  # tokens read of each long document
    piece_len: int = 1024  # tokens per model call; the memory state is carried from piece to piece

    def validate(self) -> None:
        if self.batch_size < 1 or self.num_documents < 1 or self.piece_len < 1:
            raise ConfigError("config keys 'eval.batch_size', 'eval.num_documents' and 'eval.piece_len' must be >= 1")
        if self.max_batches is not None and self.max_batches < 1:
            raise ConfigError(f"config key 'eval.max_batches' must be >= 1 or null, got {self.max_batches}")
        if self.max_document_len < 2:
            raise ConfigError(f"config key 'eval.max_document_len' must be >= 2, got {self.max_document_len}")
        buckets = self.position_buckets
        if not buckets or buckets[0] != 0 or any(b <= a for a, b in pairwise(buckets)):
            raise ConfigError(
                f"config key 'eval.position_buckets' must start at 0 and increase strictly, got {buckets}"
            )


@dataclass
class RunConfig:
    """A whole training run: ``model`` (:class:`~titans.models.TitansConfig`), ``data``, ``train``, ``eval``."""

    model: TitansConfig = field(default_factory=TitansConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        if self.data.uses_bytes and self.model.vocab_size < 256:
            raise ConfigError(
                f"config key 'model.vocab_size' is {self.model.vocab_size}, but the byte tokenizer needs >= 256"
            )


#: The default run (``configs/tiny.yaml`` holds the same values): a 2-block MAC model on the sample corpus.
TINY_CONFIG: dict[str, Any] = {
    "model": {
        "variant": "mac",
        "vocab_size": 256,
        "dim": 64,
        "depth": 2,
        "heads": 2,
        "mlp_hidden": 192,
        "memory_expansion": 2,
        "chunk_size": 32,
        "segment_len": 64,
        "persistent_tokens": 4,
    },
    "data": {"path": None, "tokenizer": "bytes", "seq_len": 128},
    "train": {
        "steps": 300,
        "batch_size": 16,
        "lr": 3e-3,
        "min_lr_ratio": 0.1,
        "warmup_steps": 30,
        "log_every": 10,
        "eval_every": 50,
        "eval_batches": 4,
        "checkpoint_every": 100,
    },
    "eval": {
        "batch_size": 32,
        "max_batches": 16,
        "position_buckets": [0, 128, 512, 2048],
        "num_documents": 1,
        "max_document_len": 8192,
        "piece_len": 256,
    },
}


def load_run_config(source: str | Path | Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """A validated :class:`RunConfig` from a YAML file or a mapping (default: :data:`TINY_CONFIG`), with
    ``"section.key=value"`` overrides applied in order. Raises :class:`ConfigError` naming the bad key."""
    return load_config(RunConfig, TINY_CONFIG if source is None else source, overrides)


def corpus_path(data: DataConfig) -> Path:
    """The corpus file or folder of ``data`` (the bundled sample when ``data.path`` is None)."""
    if data.path is None:
        from titans.data import sample_corpus_path

        return sample_corpus_path()
    return Path(data.path).expanduser()
