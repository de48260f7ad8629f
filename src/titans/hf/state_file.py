"""Memory states as first-class files: save the full state of a model after it has read a document (memory
weights and momentum of every block, convolution caches, bounded attention caches, position), load it later
to continue exactly where it stopped, or reset it.

The file is a safetensors file written by :func:`titans.models.save_state`; its metadata holds the format and
its version (``titans-state/<version>``) and the fingerprint of the model configuration. :meth:`MemoryStateFile.load`
refuses, with an error saying what differs, a file of another format or version, or one made by a model whose
configuration has another fingerprint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from titans.models import TitansLM, TitansState, load_state, save_state
from titans.models.state_io import FORMAT

FORMAT_NAME, _, _VERSION = FORMAT.rpartition("/")
FORMAT_VERSION = int(_VERSION)


class MemoryStateError(ValueError):
    """A memory-state file cannot be used with this model or this version of titans."""


@dataclass(frozen=True)
class MemoryStateInfo:
    """What a memory-state file says about itself (read from its metadata, no tensors loaded)."""

    path: Path
    version: int
    fingerprint: str
    position: int
    batch_size: int


def _native(model: nn.Module) -> TitansLM:
    """The :class:`TitansLM` of ``model`` (itself, or ``model.model`` of a ``TitansForCausalLM``)."""
    inner = getattr(model, "model", model)
    if not isinstance(inner, TitansLM):
        raise TypeError(f"expected a TitansLM or a TitansForCausalLM; got {type(model).__name__}")
    return inner


class MemoryStateFile:
    """Save, inspect, load and reset the state of a Titans model (``TitansLM`` or ``TitansForCausalLM``)."""

    version = FORMAT_VERSION

    @staticmethod
    def save(state: TitansState, path: str | Path) -> Path:
        """Write ``state`` (e.g. ``model(doc).state`` or a ``TitansCache``'s ``.state``) to ``path``."""
        state = getattr(state, "state", state)
        if state is None:
            raise MemoryStateError("nothing to save: the cache is empty (no token has been read)")
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        save_state(state, path)
        return path

    @staticmethod
    def info(path: str | Path) -> MemoryStateInfo:
        """The version, fingerprint, position and batch size stored in ``path``; :class:`MemoryStateError`
        if it is not a Titans memory-state file."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"memory-state file not found: {path}")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                metadata = handle.metadata() or {}
        except Exception as e:
            raise MemoryStateError(f"{path}: not a safetensors file ({e})") from e
        name, _, version = str(metadata.get("format", "")).rpartition("/")
        if name != FORMAT_NAME or not version.isdigit():
            raise MemoryStateError(f"{path}: not a Titans memory-state file (format {metadata.get('format')!r})")
        fields = json.loads(metadata.get("tree", "{}")).get("fields", {})
        return MemoryStateInfo(
            path,
            int(version),
            metadata.get("fingerprint", ""),
            int(fields.get("position", {}).get("value", -1)),
            int(fields.get("batch_size", {}).get("value", -1)),
        )

    @classmethod
    def load(cls, path: str | Path, model: nn.Module, device: torch.device | str | None = None) -> TitansState:
        """The state stored in ``path``, checked against ``model``: same format version, same configuration
        fingerprint. Tensors go to ``device`` (default: the model's)."""
        info = cls.info(path)
        native = _native(model)
        if info.version != cls.version:
            raise MemoryStateError(
                f"{info.path}: memory-state format version {info.version}; this version of titans reads version "
                f"{cls.version} only"
            )
        if info.fingerprint != native.fingerprint:
            raise MemoryStateError(
                f"{info.path}: the state was saved by a model with configuration fingerprint {info.fingerprint}; "
                f"this model's is {native.fingerprint} (a state only fits the configuration that made it)"
            )
        return load_state(info.path, native, device)

    @staticmethod
    def reset(model: nn.Module, batch_size: int = 1) -> TitansState:
        """A fresh state: the one before the first token of ``batch_size`` new sequences."""
        return _native(model).initial_state(batch_size)


__all__ = ["FORMAT_VERSION", "MemoryStateError", "MemoryStateFile", "MemoryStateInfo"]
