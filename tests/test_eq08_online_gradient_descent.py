"""Eq. 8: M_t = M_{t−1} − θ_t ∇ℓ(M_{t−1}; x_t). With chunk size 1, no momentum and no decay, both
implementations must equal plain online gradient descent, written here independently."""

import pytest
import torch

from conftest import assert_close, make_inputs
from titans.ops.memory_mlp import memory_forward
from titans.ops.recurrence import autograd_inner_grad, memory_recurrence_chunked, memory_recurrence_reference


def online_gradient_descent(x):
    weights = [w.expand(x.queries.shape[0], *w.shape) for w in x.initial_weights]
    outputs = []
    for t in range(x.queries.shape[2]):
        grads = autograd_inner_grad(weights, x.keys[:, :, t], x.values[:, :, t])
        weights = [w - x.lr[:, :, t, None, None] * g for w, g in zip(weights, grads)]
        outputs.append(memory_forward(weights, x.queries[:, :, t, None]).squeeze(-2))
    return torch.stack(outputs, 2), weights


@pytest.mark.parametrize("impl", [memory_recurrence_reference, memory_recurrence_chunked])
@pytest.mark.parametrize("depth", [1, 2])
def test_chunk_size_one_is_online_gradient_descent(impl, depth):
    x = make_inputs(depth=depth, momentum=False, decay=False, length=9)
    y, state = impl(*x.args(), x.state(), 1)
    y_ogd, w_ogd = online_gradient_descent(x)
    assert_close(y, y_ogd, what="outputs")
    for a, b in zip(state.weights, w_ogd):
        assert_close(a, b, what="weights")


def test_memory_learns_the_pairs_it_reads():
    """Reading a key/value pair lowers its loss: the step is a descent step (small θ)."""
    x = make_inputs(depth=2, momentum=False, decay=False, length=1, lr_scale=0.0)
    x.lr.fill_(0.1)
    w0 = [w.expand(2, *w.shape) for w in x.initial_weights]
    _, state = memory_recurrence_chunked(*x.args(), x.state(), 1)
    from titans.ops.memory_mlp import inner_loss

    assert (inner_loss(state.weights, x.keys, x.values) < inner_loss(w0, x.keys, x.values)).all()
