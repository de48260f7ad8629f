"""Shared helpers for the tests: random inputs of the memory recurrence, float64 by default."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from titans.ops.memory_mlp import memory_layer_shapes
from titans.ops.recurrence import RecurrentState

F64 = torch.float64


@dataclass
class RecurrenceInputs:
    queries: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    lr: torch.Tensor
    log_momentum: torch.Tensor | None
    log_retain: torch.Tensor | None
    initial_weights: list[torch.Tensor]

    def args(self):
        return self.queries, self.keys, self.values, self.lr, self.log_momentum, self.log_retain

    def state(self) -> RecurrentState:
        return RecurrentState.initial(self.initial_weights, self.queries.shape[0], self.log_momentum is not None)

    def leaves(self) -> list[torch.Tensor]:
        out = [self.queries, self.keys, self.values, self.lr, *self.initial_weights]
        out += [t for t in (self.log_momentum, self.log_retain) if t is not None]
        return out


def make_inputs(
    batch=2,
    heads=2,
    length=13,
    head_dim=4,
    depth=2,
    expansion=2,
    momentum=True,
    decay=True,
    lr_scale=0.5,
    seed=0,
    requires_grad=False,
    dtype=F64,
) -> RecurrenceInputs:
    """Random q/k/v (ℓ2-normalised q, k), gates in their ranges, M_0 — fresh for every call."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    shape = (batch, heads, length, head_dim)
    inputs = RecurrenceInputs(
        queries=F.normalize(randn(*shape), dim=-1),
        keys=F.normalize(randn(*shape), dim=-1),
        values=randn(*shape),
        lr=lr_scale * torch.rand(batch, heads, length, generator=g, dtype=dtype),
        log_momentum=F.logsigmoid(randn(batch, heads, length) + 1.0) if momentum else None,
        log_retain=F.logsigmoid(randn(batch, heads, length) + 3.0) if decay else None,
        initial_weights=[randn(heads, i, o) / i**0.5 for i, o in memory_layer_shapes(head_dim, depth, expansion)],
    )
    if requires_grad:
        for t in inputs.leaves():
            t.requires_grad_(True)
    return inputs


def assert_close(actual, expected, rtol=1e-9, atol=1e-10, what=""):
    """Relative error in the max norm, with a message naming what differs."""
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= atol + rtol * scale, f"{what}: max abs error {err:.3e} (scale {scale:.3e})"


def assert_states_close(a: RecurrentState, b: RecurrentState, **kw):
    assert a.offset == b.offset, f"offsets differ: {a.offset} vs {b.offset}"
    for name in ("weights", "chunk_start", "momentum"):
        ta, tb = getattr(a, name), getattr(b, name)
        assert (ta is None) == (tb is None), name
        for layer, (x, y) in enumerate(zip(ta or (), tb or ())):
            assert_close(x, y, what=f"{name}[{layer}]", **kw)


@pytest.fixture
def inputs_factory():
    return make_inputs
