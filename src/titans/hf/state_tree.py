"""Batch operations on a :class:`~titans.models.TitansState` (a tree of frozen dataclasses and tuples of
tensors): select rows (beam search), repeat rows, move to a device. Tensors are the only leaves that change."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

from titans.models import TitansState

T = TypeVar("T")


def map_tensors(tree: T, fn: Callable[[Tensor], Tensor]) -> T:
    """``tree`` with ``fn`` applied to every tensor (dataclasses, tuples and lists are rebuilt, the rest kept)."""
    if isinstance(tree, Tensor):
        return fn(tree)  # type: ignore[return-value]
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        changes = {f.name: map_tensors(getattr(tree, f.name), fn) for f in dataclasses.fields(tree)}
        return type(tree)(**changes)
    if isinstance(tree, tuple | list):
        return type(tree)(map_tensors(item, fn) for item in tree)
    return tree


def tensors_of(tree: Any) -> list[Tensor]:
    """Every tensor of ``tree``, in a fixed (depth-first, field) order."""
    found: list[Tensor] = []

    def collect(t: Tensor) -> Tensor:
        found.append(t)
        return t

    map_tensors(tree, collect)
    return found


def select_batch(state: TitansState, index: Tensor) -> TitansState:
    """Rows ``index`` (1-D, any order, repeats allowed) of every tensor's batch dimension (dimension 0)."""
    index = index.to(torch.long)
    moved = map_tensors(state, lambda t: t.index_select(0, index.to(t.device)))
    return dataclasses.replace(moved, batch_size=int(index.numel()))


def repeat_batch(state: TitansState, repeats: int) -> TitansState:
    """Every row repeated ``repeats`` times in place (row i becomes rows i·repeats … i·repeats + repeats − 1)."""
    moved = map_tensors(state, lambda t: t.repeat_interleave(repeats, dim=0))
    return dataclasses.replace(moved, batch_size=state.batch_size * repeats)


def state_to(state: TitansState, device: torch.device | str) -> TitansState:
    """The same state with every tensor on ``device``."""
    return map_tensors(state, lambda t: t.to(device))


__all__ = ["map_tensors", "repeat_batch", "select_batch", "state_to", "tensors_of"]
