"""Functional math of the neural memory: the memory model, its inner gradient, and the recurrence."""

from titans.ops.memory_mlp import inner_grad_factors, inner_loss, memory_forward, memory_layer_shapes
from titans.ops.recurrence import (
    RECURRENCES,
    ChunkMixing,
    RecurrentState,
    chunk_mixing,
    memory_recurrence_chunked,
    memory_recurrence_reference,
)

__all__ = [
    "RECURRENCES",
    "ChunkMixing",
    "RecurrentState",
    "chunk_mixing",
    "inner_grad_factors",
    "inner_loss",
    "memory_forward",
    "memory_layer_shapes",
    "memory_recurrence_chunked",
    "memory_recurrence_reference",
]
