"""Eq. 12: ℓ(M; x) = ½‖M(k) − v‖² and its analytic gradient (decision 3), memory model of TITANS.md §1."""

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close, make_inputs
from titans.ops.memory_mlp import (
    gelu_derivative,
    inner_loss,
    layer_norm,
    layer_norm_backward,
    memory_forward,
    per_token_inner_grads,
)
from titans.ops.recurrence import autograd_inner_grad


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_analytic_inner_gradient_equals_autograd(depth):
    x = make_inputs(batch=2, heads=3, length=5, head_dim=4, depth=depth, seed=depth)
    analytic = per_token_inner_grads(x.initial_weights, x.keys[:, :, :, :], x.values)
    for t in range(5):
        expected = autograd_inner_grad(
            [w.expand(2, *w.shape) for w in x.initial_weights], x.keys[:, :, t], x.values[:, :, t]
        )
        for layer, (a, e) in enumerate(zip(analytic, expected)):
            assert_close(a[:, :, t], e, what=f"token {t} layer {layer}")


def test_loss_is_half_squared_error_summed_over_features():
    x = make_inputs(depth=2, length=3)
    w = [w.expand(2, *w.shape) for w in x.initial_weights]
    manual = 0.5 * ((memory_forward(w, x.keys) - x.values) ** 2).sum(-1)
    assert_close(inner_loss(w, x.keys, x.values), manual)
    assert inner_loss(w, x.keys, x.values).shape == (2, 2, 3)


def test_memory_model_forms():
    """depth 1: M(x) = x W; depth 2: M(x) = x + LN(σ(x W_1) W_2) with σ = GELU, LN without affine."""
    x = make_inputs(depth=2, length=3)
    k = x.keys
    w1, w2 = (w.expand(2, *w.shape) for w in x.initial_weights)
    expected = k + F.layer_norm(F.gelu(k @ w1) @ w2, (k.shape[-1],), eps=1e-5)
    assert_close(memory_forward([w1, w2], k), expected)
    lin = make_inputs(depth=1, length=3)
    w = lin.initial_weights[0].expand(2, *lin.initial_weights[0].shape)
    assert_close(memory_forward([w], lin.keys), lin.keys @ w)


def test_layer_norm_and_gelu_derivatives():
    z = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 7, dtype=torch.float64)
    (auto,) = torch.autograd.grad((layer_norm(z) * g).sum(), z)
    assert_close(layer_norm_backward(z.detach(), g), auto)
    h = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    (dh,) = torch.autograd.grad(F.gelu(h).sum(), h)
    assert_close(gelu_derivative(h.detach()), dh)
