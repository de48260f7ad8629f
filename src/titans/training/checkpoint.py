"""Checkpoints that survive a crash: model weights (safetensors), trainer state, and the run config.

A checkpoint is a folder::

    runs/NAME/last/model.safetensors   weights, and in its metadata the step and the model config (JSON)
    runs/NAME/last/trainer_state.pt    optimizer, step, RNG states, best validation loss (``torch.save``)
    runs/NAME/last/config.yaml         the whole run config
    runs/NAME/best/...                 the same for the lowest validation loss (weights and config only)

Every file is written to a temporary name in the same folder, flushed with ``fsync`` and renamed with
``os.replace``. A whole checkpoint is first written to ``.last.tmp``, then published by renaming the old folder
to ``.last.old`` and the new one to ``last``; :func:`find_checkpoint` falls back on ``.last.old`` if a crash
came between those two renames. So a crash at any moment leaves a complete, loadable checkpoint behind.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from titans.config_io import ConfigError, load_config, save_config, to_dict
from titans.models import TitansConfig
from titans.training.config import RunConfig

FORMAT = "titans-checkpoint/1"
MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "config.yaml"
LAST = "last"
BEST = "best"

# Model options that do not change the weights: a checkpoint loads whatever they are.
_WEIGHT_NEUTRAL_OPTIONS = frozenset({"impl", "check_inputs", "init_std"})


class CheckpointError(ConfigError):
    """A checkpoint is damaged or belongs to a different model config (a :class:`ConfigError`, so the command
    line reports it in one line like any other bad input)."""


# --------------------------------------------------------------------------------------------- atomic files


def _fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file beside it, fsync, then ``os.replace``."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """``save_file`` to a temporary name beside ``path``, fsync, then ``os.replace``."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


# --------------------------------------------------------------------------------------------- saving


def _distinct_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without aliases (tied weights are stored once, under their first name), on the CPU."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    distinct: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        distinct[name] = tensor.detach().to("cpu").contiguous()
    return distinct


def model_metadata(config: RunConfig, step: int, val_loss: float | None) -> dict[str, str]:
    """The string metadata stored in ``model.safetensors``."""
    return {
        "format": FORMAT,
        "step": str(step),
        "val_loss": "" if val_loss is None else repr(val_loss),
        "model_config": json.dumps(to_dict(config.model)),
        "fingerprint": config.model.fingerprint(),
    }


def save_checkpoint(
    directory: Path,
    model_state: Mapping[str, torch.Tensor],
    config: RunConfig,
    step: int,
    val_loss: float | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint to ``directory`` (e.g. ``runs/NAME/last``), replacing it atomically."""
    directory = Path(directory)
    staging = directory.with_name(f".{directory.name}.tmp")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        metadata = model_metadata(config, step, val_loss)
        _write_safetensors(staging / MODEL_FILE, _distinct_tensors(model_state), metadata)
        if trainer_state is not None:
            atomic_write(staging / STATE_FILE, lambda file: torch.save(trainer_state, file))
        _write_text(staging / CONFIG_FILE, _config_yaml(config))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _publish(staging, directory)
    return directory


def _config_yaml(config: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


def _publish(staging: Path, directory: Path) -> None:
    """Swap the finished ``staging`` folder in as ``directory``; the old one stays until the swap is done."""
    previous = _previous_name(directory)
    if previous.exists():
        shutil.rmtree(previous)
    if directory.exists():
        os.replace(directory, previous)
    os.replace(staging, directory)
    _fsync_directory(directory.parent)
    if previous.exists():
        shutil.rmtree(previous)


def _previous_name(directory: Path) -> Path:
    return directory.with_name(f".{directory.name}.old")


def save_run_config(config: RunConfig, run_dir: Path) -> Path:
    """``run_dir/config.yaml``: the config the run was started (or last resumed) with."""
    return save_config(config, run_dir / CONFIG_FILE)


# --------------------------------------------------------------------------------------------- finding


def find_checkpoint(run_dir: Path, name: str) -> Path | None:
    """``run_dir/name`` if it holds a checkpoint (or its previous copy after an interrupted swap), else None."""
    for candidate in (run_dir / name, _previous_name(run_dir / name)):
        if (candidate / MODEL_FILE).is_file():
            return candidate
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder meant by ``path``: a checkpoint folder itself, or a run folder (``best``, else
    ``last``). Raises :class:`FileNotFoundError` naming what is missing."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if (path / MODEL_FILE).is_file():
        return path
    for name in (BEST, LAST):
        found = find_checkpoint(path, name)
        if found is not None:
            return found
    raise FileNotFoundError(
        f"no checkpoint in {path}: expected {path / BEST / MODEL_FILE} or {path / LAST / MODEL_FILE}"
    )


# --------------------------------------------------------------------------------------------- loading


def read_metadata(directory: Path) -> dict[str, str]:
    """The metadata of ``directory/model.safetensors``; :class:`CheckpointError` if it is not a checkpoint."""
    path = Path(directory) / MODEL_FILE
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e})") from e
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a Titans checkpoint (format {metadata.get('format')!r})")
    return metadata


def checkpoint_step(directory: Path) -> int:
    """The number of optimizer steps behind the checkpoint's weights."""
    return int(read_metadata(directory)["step"])


def read_checkpoint_config(directory: Path) -> RunConfig:
    """The run config stored with a checkpoint."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (every checkpoint keeps its run config)")
    return load_config(RunConfig, path)


def config_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"name (checkpoint A, config B)"`` for every model option that changes the weights and differs."""
    names = sorted((set(stored) | set(current)) - _WEIGHT_NEUTRAL_OPTIONS)
    return [
        f"{name} (checkpoint {stored.get(name)!r}, config {current.get(name)!r})"
        for name in names
        if stored.get(name) != current.get(name)
    ]


def check_model_config(directory: Path, config: TitansConfig) -> None:
    """Raise :class:`CheckpointError` naming every differing field if the checkpoint has another model config."""
    stored = json.loads(read_metadata(directory)["model_config"])
    differences = config_differences(stored, to_dict(config))
    if differences:
        raise CheckpointError(
            f"checkpoint {directory} was saved for a different model config; differing fields: "
            + "; ".join(differences)
        )


def load_model_weights(directory: Path, model: nn.Module, config: TitansConfig) -> dict[str, str]:
    """Load ``directory/model.safetensors`` into ``model`` after checking the config; return the metadata."""
    check_model_config(directory, config)
    path = Path(directory) / MODEL_FILE
    device = next(model.parameters()).device
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        metadata = handle.metadata() or {}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = _tied_names(model)
    missing = [name for name in missing if name not in tied]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model (missing {missing}, unexpected {unexpected})")
    model.to(device)
    return metadata


def _tied_names(model: nn.Module) -> set[str]:
    """Names of state entries that alias an earlier entry (tied weights, stored once)."""
    state = model.state_dict()
    return set(state) - set(_distinct_tensors(state))


def load_trainer_state(directory: Path) -> dict[str, Any]:
    """The optimizer / step / RNG state of a ``last`` checkpoint."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing, so the run cannot be resumed from {directory}")
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    weights_step = int(read_metadata(directory)["step"])
    if state.get("step") != weights_step:
        raise CheckpointError(
            f"{directory}: the weights are from step {weights_step}, the trainer state from {state.get('step')}"
        )
    return state


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of ``directory/model.safetensors`` (for comparisons in tests and tools)."""
    with safe_open(str(Path(directory) / MODEL_FILE), framework="pt", device="cpu") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118


# --------------------------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator the training could touch (torch CPU and CUDA, Python, NumPy)."""
    _kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }  # fmt: skip


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(_as_python_rng_state(state["python"]))
    numpy_state = state["numpy"]
    keys = numpy_state["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        ("MT19937", keys, numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    )


def _as_python_rng_state(state: Any) -> tuple[Any, ...]:
    """``random.setstate`` wants tuples; a round trip through a file may have made lists of them."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
