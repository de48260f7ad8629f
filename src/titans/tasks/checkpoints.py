"""Weights of task runs (safetensors) and loading a starting checkpoint (``--init-checkpoint``).

A task run folder holds ``config.yaml`` (the :class:`~titans.tasks.run_config.TaskRunConfig`) and
``checkpoints/best.safetensors`` / ``checkpoints/last.safetensors`` (weights, with the step, the task and the
model config in the safetensors metadata).

``--init-checkpoint`` accepts, and :func:`resolve_init_checkpoint` finds the weights and config of:

* a ``titans train`` checkpoint folder (``model.safetensors`` + ``config.yaml``, the run config, whose
  ``model`` section is the :class:`~titans.models.TitansConfig`), or its run folder (``best/``, else ``last/``);
* a task run folder (``checkpoints/best.safetensors``, else ``last``, and ``config.yaml``);
* a ``.safetensors`` file with a ``config.yaml`` beside it or one folder up.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from titans.config_io import load_config, read_yaml
from titans.models import TitansConfig

FORMAT = "titans-task/1"
CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
BEST_FILE = "best.safetensors"
LAST_FILE = "last.safetensors"
TRAIN_MODEL_FILE = "model.safetensors"


class TaskCheckpointError(FileNotFoundError):
    """A checkpoint is missing or cannot be loaded into the model it was meant for."""


@dataclass(frozen=True)
class CheckpointFiles:
    """Where a checkpoint's weights and config are."""

    weights: Path
    config: Path


# ----------------------------------------------------------------------------------------------- saving


def distinct_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without aliases (tied weights once, under their first name), contiguous, on the CPU."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        tensors[name] = tensor.detach().to("cpu").contiguous()
    return tensors


def save_weights(path: str | Path, model: nn.Module, metadata: Mapping[str, Any]) -> Path:
    """Write ``model``'s weights to ``path`` atomically (temporary file + ``os.replace``).

    ``metadata`` values are stored as strings (non-strings as JSON), plus ``format``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
    text["format"] = FORMAT
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file(distinct_state(model), temporary, metadata=text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise TaskCheckpointError(f"checkpoint weights not found: {path}")
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        metadata = dict(handle.metadata() or {})
    return tensors, metadata


def _aliases(model: nn.Module) -> set[str]:
    """State entries that alias an earlier entry (tied weights are stored only once)."""
    return set(model.state_dict()) - set(distinct_state(model))


def load_weights(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Load ``tensors`` into ``model`` strictly (tied aliases may be absent); clear errors on a mismatch."""
    expected = model.state_dict()
    wrong = [
        f"{name} {tuple(tensor.shape)} != {tuple(expected[name].shape)}"
        for name, tensor in tensors.items()
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape)
    ]
    if wrong:
        raise TaskCheckpointError(f"{source}: weights have other shapes than the model: {'; '.join(wrong[:5])}")
    missing, unexpected = model.load_state_dict(dict(tensors), strict=False)
    missing = [name for name in missing if name not in _aliases(model)]
    if missing or unexpected:
        raise TaskCheckpointError(
            f"{source}: weights do not fit the model (missing {missing[:8]}, unexpected {unexpected[:8]})"
        )


# ----------------------------------------------------------------------------------------------- finding


def _first_file(*candidates: Path) -> Path | None:
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def resolve_init_checkpoint(path: str | Path) -> CheckpointFiles:
    """Find the weights and ``config.yaml`` meant by ``path`` (see the module docstring).

    Raises:
        TaskCheckpointError: naming the files that were looked for.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise TaskCheckpointError(f"checkpoint not found: {root}")
    if root.is_file():
        weights: Path | None = root
        config = _first_file(root.parent / CONFIG_FILE, root.parent.parent / CONFIG_FILE)
    else:
        weights = _first_file(
            root / TRAIN_MODEL_FILE,
            root / "best" / TRAIN_MODEL_FILE,
            root / "last" / TRAIN_MODEL_FILE,
            root / CHECKPOINT_DIR / BEST_FILE,
            root / CHECKPOINT_DIR / LAST_FILE,
        )
        config = None
        if weights is not None:
            config = _first_file(weights.parent / CONFIG_FILE, weights.parent.parent / CONFIG_FILE)
    if weights is None:
        raise TaskCheckpointError(
            f"no checkpoint in {root}: expected {TRAIN_MODEL_FILE} (or best/ or last/ holding one) from "
            f"'titans train', or {CHECKPOINT_DIR}/{BEST_FILE} from 'titans task train'"
        )
    if config is None:
        raise TaskCheckpointError(f"{weights}: no {CONFIG_FILE} beside it or one folder up, so the model is unknown")
    return CheckpointFiles(weights, config)


def read_model_config(config_path: str | Path) -> TitansConfig:
    """The :class:`TitansConfig` of a ``config.yaml``: its ``model`` section (run configs) or the whole file."""
    data = read_yaml(config_path)
    section = data.get("model", data)
    if not isinstance(section, dict):
        raise TaskCheckpointError(f"{config_path}: 'model' must be a mapping of model options")
    return load_config(TitansConfig, section)


def backbone_tensors(tensors: Mapping[str, torch.Tensor], prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """The language-model weights among ``tensors``: as they are, or without ``prefix`` (task models)."""
    if any(name.startswith(prefix) for name in tensors):
        return {name[len(prefix) :]: tensor for name, tensor in tensors.items() if name.startswith(prefix)}
    return dict(tensors)


__all__ = [
    "BEST_FILE",
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "LAST_FILE",
    "CheckpointFiles",
    "TaskCheckpointError",
    "backbone_tensors",
    "distinct_state",
    "load_weights",
    "read_model_config",
    "read_weights",
    "resolve_init_checkpoint",
    "save_weights",
]
