"""The hand-written chunk backward (naive twin of the fused kernels) against torch.autograd, in float64."""

from __future__ import annotations

import pytest
import torch

from titans.ops.chunk_vjp import (
    Mixing,
    chunk_backward,
    chunk_forward,
    gelu_second_derivative,
    layer_norm_second_order,
)
from titans.ops.memory_mlp import gelu, layer_norm_backward, memory_layer_shapes
from titans.ops.recurrence import _chunk_span, chunk_mixing

DT = torch.float64


def _mixing(lr, log_momentum, log_retain) -> Mixing:
    m = chunk_mixing(lr, log_momentum, log_retain)
    assert m.carry is not None and m.momentum_mix is not None and m.momentum_decay is not None
    return Mixing(m.retain, m.carry, m.grad_mix, m.momentum_mix[..., -1, :], m.momentum_decay[..., -1])


def _problem(depth: int, n: int, seed: int, batch=(2, 3), d=4, expansion=2):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=DT) * scale).requires_grad_(True)

    q, k, v = (torch.nn.functional.normalize(rnd(*batch, n, d), dim=-1) for _ in range(3))
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    shapes = memory_layer_shapes(d, depth, expansion)
    weights = [rnd(*batch, a, b, scale=a**-0.5) for a, b in shapes]
    surprise = [rnd(*batch, a, b, scale=0.1) for a, b in shapes]
    lr = (torch.rand(*batch, n, generator=g, dtype=DT) * 0.5).requires_grad_(True)
    log_momentum = torch.nn.functional.logsigmoid(rnd(*batch, n) + 1.0).detach().requires_grad_(True)
    log_retain = torch.nn.functional.logsigmoid(rnd(*batch, n) + 3.0).detach().requires_grad_(True)
    return q, k, v, weights, surprise, (lr, log_momentum, log_retain)


def test_gelu_second_derivative_matches_autograd():
    h = torch.linspace(-4, 4, 41, dtype=DT, requires_grad=True)
    (first,) = torch.autograd.grad(gelu(h).sum(), h, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), h)
    torch.testing.assert_close(gelu_second_derivative(h.detach()), second)


def test_layer_norm_second_order_matches_autograd():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 7, generator=g, dtype=DT, requires_grad=True)
    grad_out, upstream = torch.randn(5, 7, generator=g, dtype=DT), torch.randn(5, 7, generator=g, dtype=DT)
    (expected,) = torch.autograd.grad((upstream * layer_norm_backward(z, grad_out)).sum(), z)
    torch.testing.assert_close(layer_norm_second_order(z.detach(), grad_out, upstream), expected)


@pytest.mark.parametrize("anchored", [False, True], ids=["towards-0", "towards-M0"])
@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("n", [1, 3, 8])
def test_chunk_forward_and_backward_match_autograd(depth, n, anchored):
    q, k, v, weights, surprise, gates = _problem(depth, n, seed=10 * depth + n)
    g = torch.Generator().manual_seed(7)  # M_0: one per head (dim 1 of the batch), shared over dim 0
    anchor = [torch.randn(w.shape[1:], generator=g, dtype=DT).requires_grad_(True) for w in weights]
    anchor_or_none = anchor if anchored else None
    mixing = chunk_mixing(*gates)
    y_ref, w_ref, s_ref = _chunk_span(q, k, v, mixing, weights, surprise, weights, anchor_or_none)
    assert s_ref is not None
    y, w_new, s_new, _ = chunk_forward(q, k, v, _mixing(*gates), weights, surprise, anchor_or_none)
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(w_new + s_new, w_ref + s_ref):
        torch.testing.assert_close(a, b)

    g = torch.Generator().manual_seed(99)
    grad_y = torch.randn(y.shape, generator=g, dtype=DT)
    grad_w = [torch.randn(w.shape, generator=g, dtype=DT) for w in w_ref]
    grad_s = [torch.randn(s.shape, generator=g, dtype=DT) for s in s_ref]
    leaves = [q, k, v, *weights, *surprise, *gates, *(anchor if anchored else [])]
    expected = torch.autograd.grad([y_ref, *w_ref, *s_ref], leaves, [grad_y, *grad_w, *grad_s])

    with torch.no_grad():
        grads = chunk_backward(
            q,
            k,
            v,
            _mixing(*gates),
            [w.detach() for w in weights],
            [s.detach() for s in surprise],
            grad_y,
            grad_w,
            grad_s,
            None if anchor_or_none is None else [m.detach() for m in anchor_or_none],
        )
    assert (grads.anchor is None) == (not anchored)
    mix = _mixing(*gates)  # gate gradients: through the (autograd) mixing coefficients
    gate_grads = torch.autograd.grad(list(mix), list(gates), list(grads.mixing))
    anchor_grads = [g.sum(0) for g in grads.anchor] if grads.anchor is not None else []  # shared over the batch
    actual = [grads.q, grads.k, grads.v, *grads.weights, *grads.surprise, *gate_grads, *anchor_grads]
    names = ["q", "k", "v"] + [f"W{i}" for i in range(depth)] + [f"S{i}" for i in range(depth)] + ["lr", "eta", "alpha"]
    names += [f"M0_{i}" for i in range(depth)] if anchored else []
    assert len(actual) == len(expected) == len(names)
    for name, a, b in zip(names, actual, expected):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"grad of {name}: {m}")
