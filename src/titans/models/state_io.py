"""Save a :class:`~titans.models.lm.TitansState` (memory weights, momentum, caches, positions) to a
safetensors file and load it back for the same configuration.

The file holds every tensor of the state under a dotted name and, in its metadata, the state's structure
(JSON) and the configuration fingerprint, which :func:`load_state` checks against the model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from titans.layers.neural_memory import NeuralMemoryState
from titans.models.attention import KVCache
from titans.models.blocks import BlockState
from titans.models.lm import TitansState
from titans.ops.recurrence import RecurrentState

FORMAT = "titans-state/1"
_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (TitansState, BlockState, KVCache, NeuralMemoryState, RecurrentState)
}


def save_state(state: TitansState, path: str | Path) -> None:
    """Write ``state`` to ``path`` (safetensors). Tensors are copied to the CPU, contiguous and unshared."""
    if not isinstance(state, TitansState):
        raise TypeError(f"save_state expects a TitansState; got {type(state).__name__}")
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "state", tensors)
    metadata = {"format": FORMAT, "fingerprint": state.fingerprint, "tree": json.dumps(tree)}
    save_file(tensors, str(path), metadata=metadata)


def load_state(path: str | Path, model: nn.Module, device: torch.device | str | None = None) -> TitansState:
    """Read a state saved by :func:`save_state` for ``model`` (its configuration fingerprint must match);
    tensors go to ``device`` (default: the model's)."""
    if device is None:
        device = next(model.parameters()).device
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path}: not a Titans state file (format {metadata.get('format')!r})")
        expected = getattr(model, "fingerprint", None)
        if metadata["fingerprint"] != expected:
            raise ValueError(
                f"{path}: the state was saved for configuration {metadata['fingerprint']}, the model is {expected}"
            )
        tensors = {name: handle.get_tensor(name).to(device) for name in handle.keys()}  # noqa: SIM118
    state = _decode(json.loads(metadata["tree"]), tensors)
    assert isinstance(state, TitansState)
    return state


def _encode(obj: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON tree of ``obj``; its tensors go into ``tensors`` under dotted names."""
    if isinstance(obj, torch.Tensor):
        tensors[name] = obj.detach().to("cpu").clone().contiguous()
        return {"tensor": name}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if type(obj).__name__ not in _TYPES:
            raise TypeError(f"save_state: cannot store a {type(obj).__name__}")
        fields = {f.name: _encode(getattr(obj, f.name), f"{name}.{f.name}", tensors) for f in dataclasses.fields(obj)}
        return {"type": type(obj).__name__, "fields": fields}
    if isinstance(obj, tuple | list):
        return {"tuple": [_encode(item, f"{name}.{i}", tensors) for i, item in enumerate(obj)]}
    if obj is None or isinstance(obj, bool | int | float | str):
        return {"value": obj}
    raise TypeError(f"save_state: cannot store {name} of type {type(obj).__name__}")


def _decode(node: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    if "tensor" in node:
        return tensors[node["tensor"]]
    if "type" in node:
        cls = _TYPES[node["type"]]
        return cls(**{key: _decode(value, tensors) for key, value in node["fields"].items()})
    if "tuple" in node:
        return tuple(_decode(item, tensors) for item in node["tuple"])
    return node["value"]


__all__ = ["load_state", "save_state"]
