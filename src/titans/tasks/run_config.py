"""Configuration of ``titans task ...`` runs: which task, which data, which model, how to train and evaluate.

A run config is a nested dataclass (:class:`TaskRunConfig`) read and written through :mod:`titans.config_io`,
so a YAML file and ``--set section.key=value`` overrides work exactly as for ``titans train``::

    config = build_run_config("needle", variant="mac", overrides=["train.steps=200", "model.dim=64"])

Task names: ``needle`` (the titan-min needle-position task), ``needle-hard`` (lengths beyond the attention
window / MAC segment, answer read from the final token), ``sniah-1``, ``sniah-2``, ``sniah-3`` (RULER
S-NIAH) and ``babilong-qa1`` ... ``babilong-qa5``. Every task has its own defaults (:func:`default_run_dict`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from titans.config_io import ConfigError, apply_override, load_config, parse_override, read_yaml, to_dict
from titans.models import VARIANTS, TitansConfig, preset
from titans.tasks.needle import NEEDLE_VOCAB_SIZE

TaskKind = Literal["needle", "sniah", "babilong"]
HeadKind = Literal["local", "final"]
PositionEncoding = Literal["auto", "none", "sinusoidal"]
ExportFormat = Literal["torch.export", "torchscript", "none"]
Precision = Literal["auto", "fp32", "bf16"]
LossOn = Literal["answer", "all"]


@dataclass(frozen=True)
class TaskSpec:
    """A task name resolved: ``kind`` picks the pipeline, ``generator_name`` the generator's own task name."""

    name: str
    kind: TaskKind
    generator_name: str

    @property
    def is_needle(self) -> bool:
        """True for ``needle`` and ``needle-hard`` (position classification, not text generation)."""
        return self.kind == "needle"


TASKS: dict[str, TaskSpec] = {
    "needle": TaskSpec("needle", "needle", "needle"),
    "needle-hard": TaskSpec("needle-hard", "needle", "needle_hard"),
    **{f"sniah-{i}": TaskSpec(f"sniah-{i}", "sniah", f"s_niah_{i}") for i in (1, 2, 3)},
    **{f"babilong-qa{i}": TaskSpec(f"babilong-qa{i}", "babilong", f"qa{i}") for i in range(1, 6)},
}
"""Every task of ``titans task``, by its command-line name."""

TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def get_task(name: str) -> TaskSpec:
    """The spec of task ``name`` (case-insensitive; ``_`` works for ``-``).

    Raises:
        ValueError: naming the known tasks when ``name`` is not one of them.
    """
    spec = TASKS.get(name.strip().lower().replace("_", "-"))
    if spec is None:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
    return spec


# ------------------------------------------------------------------------------------------------ sections


@dataclass
class TaskDataConfig:
    """Which samples: lengths, counts, depths, seed, tokenizer.

    For the needle tasks ``num_samples`` is the total count, split 80/10/10 into train/validation/test,
    and ``lengths`` are the sequence lengths of all three splits (``eval_lengths``, when set, makes a fresh
    test set with other lengths). For the text tasks ``num_samples`` is the number of *training* prompts per
    training length, ``val_samples`` of validation prompts per length, and ``eval_samples`` of evaluation
    prompts per evaluation length; training, validation and evaluation prompts come from different seeds.
    """

    task: str = "needle"
    lengths: list[int] = field(default_factory=lambda: [64, 128, 256])
    eval_lengths: list[int] | None = None  # None: the training lengths
    num_samples: int = 10_000
    val_samples: int = 16
    eval_samples: int = 100
    depths: list[float] | None = None  # S-NIAH needle depths in percent (None: RULER's 40)
    seed: int = 42
    tokenizer: str = "bytes"  # "bytes" or the path of a tokenizer.json (text tasks)
    data_dir: str | None = None  # shared data (essays, bAbI, Gutenberg); None: the default lookup
    background_max_chars: int | None = 4_000_000  # BABILong background read per split (None: all of it)

    def validate(self) -> None:
        get_task(self.task)
        self.task = get_task(self.task).name
        smallest = 0 if get_task(self.task).kind == "babilong" else 1  # BABILong's 0K: no background
        _check_lengths("data.lengths", self.lengths, smallest)
        if self.eval_lengths is not None:
            _check_lengths("data.eval_lengths", self.eval_lengths, smallest)
        for name in ("num_samples", "eval_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key 'data.{name}' must be >= 1, got {getattr(self, name)}")
        if self.val_samples < 0:
            raise ConfigError(f"config key 'data.val_samples' must be >= 0, got {self.val_samples}")
        if self.depths is not None and (not self.depths or any(not 0 <= d <= 100 for d in self.depths)):
            raise ConfigError(f"config key 'data.depths' must be percentages in [0, 100], got {self.depths}")
        if get_task(self.task).is_needle and self.num_samples < 10:
            raise ConfigError(f"config key 'data.num_samples' must be >= 10 for a needle task, got {self.num_samples}")

    @property
    def spec(self) -> TaskSpec:
        """The resolved task."""
        return get_task(self.task)

    @property
    def evaluation_lengths(self) -> list[int]:
        """``eval_lengths`` or, when unset, ``lengths``."""
        return list(self.eval_lengths if self.eval_lengths is not None else self.lengths)


@dataclass
class PositionHeadConfig:
    """The needle tasks' position head (see :mod:`titans.tasks.position_model`).

    ``kind``: ``"local"`` scores every position from its own final hidden state; ``"final"`` reads the answer
    from the last real token only (a pointer over position encodings), so the needle must be carried to the
    end of the sequence. ``position_encoding``: absolute sinusoidal positions added to the token embeddings
    (``"auto"``: on for ``final``, which must name an absolute position; off for ``local``).
    """

    kind: HeadKind = "local"
    position_encoding: PositionEncoding = "auto"

    @property
    def uses_positions(self) -> bool:
        """Whether the backbone input gets absolute sinusoidal positions."""
        if self.position_encoding == "auto":
            return self.kind == "final"
        return self.position_encoding == "sinusoidal"


@dataclass
class TaskTrainConfig:
    """AdamW with linear warm-up and cosine decay; validation every ``eval_every`` steps; best by validation."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 turns clipping off
    eval_every: int = 50
    log_every: int = 10
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", ...
    precision: Precision = "auto"  # "auto": bf16 autocast on CUDA, fp32 on the CPU
    # Text tasks: which tokens the training loss covers — "answer" (only the answer, the default) or "all" (every
    # next token of prompt and answer: the repeated haystack then teaches copying). Validation scores the answer.
    loss_on: LossOn = "answer"

    def validate(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key 'train.{name}' must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"config key 'train.lr' must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"config key 'train.min_lr_ratio' must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("config keys 'train.warmup_steps', 'train.weight_decay', 'train.grad_clip' must be >= 0")


@dataclass
class TaskEvalConfig:
    """Evaluation: batch sizes, piece length for long prompts, decoding length, model export."""

    batch_size: int = 64  # needle tasks: sequences per forward pass
    decode_batch_size: int = 16  # text tasks: prompts decoded together (one target length per batch)
    piece_len: int = 2048  # prompts are read in pieces of this many tokens, the state carried between them
    max_new_tokens: int | None = None  # None: the longest answer of the evaluation set + 8
    export_format: ExportFormat = "torchscript"  # torch.export of the memory variants takes minutes
    export_batch_size: int = 16  # the exported needle model takes (export_batch_size, padded length) inputs

    def validate(self) -> None:
        for name in ("batch_size", "decode_batch_size", "piece_len", "export_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key 'eval.{name}' must be >= 1, got {getattr(self, name)}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"config key 'eval.max_new_tokens' must be >= 1 or null, got {self.max_new_tokens}")


@dataclass
class TaskRunConfig:
    """A whole ``titans task`` run: ``data``, ``model`` (a :class:`~titans.models.TitansConfig`), ``head``
    (needle tasks only), ``train``, ``eval``, and optionally the checkpoint the weights start from."""

    data: TaskDataConfig = field(default_factory=TaskDataConfig)
    model: TitansConfig = field(default_factory=TitansConfig)
    head: PositionHeadConfig = field(default_factory=PositionHeadConfig)
    train: TaskTrainConfig = field(default_factory=TaskTrainConfig)
    eval: TaskEvalConfig = field(default_factory=TaskEvalConfig)
    init_checkpoint: str | None = None

    def validate(self) -> None:
        spec = self.data.spec
        if spec.is_needle and self.model.vocab_size < NEEDLE_VOCAB_SIZE:
            raise ConfigError(
                f"config key 'model.vocab_size' is {self.model.vocab_size}; "
                f"the needle task needs >= {NEEDLE_VOCAB_SIZE}"
            )
        if not spec.is_needle and self.data.tokenizer == "bytes" and self.model.vocab_size < 256:
            raise ConfigError(
                f"config key 'model.vocab_size' is {self.model.vocab_size}, but the byte tokenizer needs >= 256"
            )


def _check_lengths(key: str, lengths: Sequence[int], smallest: int) -> None:
    if not lengths:
        raise ConfigError(f"config key '{key}' must list at least one length")
    bad = [length for length in lengths if length < smallest]
    if bad:
        raise ConfigError(f"config key '{key}' must hold lengths >= {smallest}, got {list(lengths)}")


# ------------------------------------------------------------------------------------------------ defaults

_NEEDLE_MODEL: dict[str, Any] = dict(
    vocab_size=NEEDLE_VOCAB_SIZE, dim=64, depth=2, heads=2, mlp_hidden=128, memory_expansion=2,
    chunk_size=16, segment_len=64, window=64, persistent_tokens=4, check_inputs=False,
)  # fmt: skip
"""Needle tasks: a small model (window and MAC segment 64) that trains on a CPU in minutes."""

_TEXT_MODEL: dict[str, Any] = dict(
    vocab_size=256, dim=128, depth=2, heads=4, mlp_hidden=256, memory_expansion=2,
    chunk_size=16, segment_len=128, window=128, persistent_tokens=4,
)  # fmt: skip
"""Text tasks trained from scratch: a small byte-level model (fine-tune a pretrained run instead)."""


def default_run_dict(task: str) -> dict[str, Any]:
    """The defaults of ``task`` as a plain mapping (what a YAML file and ``--set`` then override)."""
    spec = get_task(task)
    if spec.name == "needle":
        return {
            "data": {"task": spec.name, "lengths": [64, 128, 256], "num_samples": 10_000},
            "model": dict(_NEEDLE_MODEL),
            "head": {"kind": "local"},
            "train": {"steps": 300, "batch_size": 32, "lr": 3e-3, "eval_every": 50},
        }
    if spec.name == "needle-hard":
        return {
            "data": {"task": spec.name, "lengths": [512, 768, 1024], "num_samples": 2_000},
            "model": dict(_NEEDLE_MODEL),
            "head": {"kind": "final"},
            "train": {"steps": 2_000, "batch_size": 16, "lr": 2e-3, "eval_every": 200},
            "eval": {"batch_size": 32},
        }
    return {
        "data": {
            "task": spec.name,
            "lengths": [1024] if spec.kind == "sniah" else [0, 1024],
            "num_samples": 256,
            "val_samples": 16,
            "eval_samples": 50,
        },
        "model": dict(_TEXT_MODEL),
        "train": {"steps": 200, "batch_size": 8, "lr": 1e-3, "eval_every": 50},
        "eval": {"batch_size": 1},
    }


def _model_section(variant: str | None, preset_name: str | None, base: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` mapping: a named preset (keeping the task's vocabulary) or the task's default."""
    if variant is not None and variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if preset_name is None:
        values = {**base, **({"variant": variant} if variant else {})}
        if values.get("variant") in ("transformer", "swa"):
            values["persistent_tokens"] = 0  # the baselines have none, as in titans.models.presets
        return values
    chosen = preset(preset_name, variant or base.get("variant", "mac"))
    values = chosen.to_dict()
    values["vocab_size"] = max(values["vocab_size"], base["vocab_size"])
    return values


def build_run_config(
    task: str,
    *,
    variant: str | None = None,
    preset_name: str | None = None,
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    init_checkpoint: str | Path | None = None,
    init_model: TitansConfig | None = None,
    base: Mapping[str, Any] | None = None,
) -> TaskRunConfig:
    """The run config of ``task``: its defaults (or ``base``, e.g. a saved run's config), then
    ``preset_name``/``variant``, the YAML ``config_file``, the ``init_model`` of a checkpoint (which fixes
    the architecture), then ``overrides`` (``"a.b=value"`` strings).

    Raises:
        ConfigError: an unknown task, variant, preset or key, or a bad value (the message names the key).
    """
    try:
        data = copy.deepcopy(dict(base)) if base is not None else default_run_dict(task)
        if base is None or variant is not None or preset_name is not None:
            data["model"] = _model_section(variant, preset_name, data["model"])
    except ValueError as error:
        raise ConfigError(str(error)) from error
    if config_file is not None:
        _merge(data, read_yaml(config_file))
    if init_model is not None:
        data["model"] = init_model.to_dict()
        if variant is not None and variant != init_model.variant:
            raise ConfigError(
                f"--variant {variant} conflicts with the checkpoint, a {init_model.variant!r} model; leave it out"
            )
    if init_checkpoint is not None:
        data["init_checkpoint"] = str(init_checkpoint)
    data["data"]["task"] = get_task(task).name
    for override in overrides:
        apply_override(data, *parse_override(override))
    if get_task(task).name != get_task(str(data["data"]["task"])).name:
        raise ConfigError(f"config key 'data.task' is {data['data']['task']!r}, but the command is for {task!r}")
    return load_config(TaskRunConfig, data)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    """Recursively merge ``update`` into ``base`` (mappings merge, everything else replaces)."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def run_config_dict(config: TaskRunConfig) -> dict[str, Any]:
    """The YAML-ready mapping of ``config`` (what ``config.yaml`` of a run holds)."""
    values: dict[str, Any] = to_dict(config)
    values["model"] = config.model.to_dict()
    return values


def replace_model(config: TaskRunConfig, **changes: Any) -> TaskRunConfig:
    """A copy of ``config`` with model fields changed (e.g. ``check_inputs=False``)."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **changes))


__all__ = [
    "TASKS",
    "TASK_NAMES",
    "PositionHeadConfig",
    "TaskDataConfig",
    "TaskEvalConfig",
    "TaskRunConfig",
    "TaskSpec",
    "TaskTrainConfig",
    "build_run_config",
    "default_run_dict",
    "get_task",
    "replace_model",
    "run_config_dict",
]
