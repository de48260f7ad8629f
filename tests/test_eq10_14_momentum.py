"""Eqs. 10/14: surprise with momentum, S_t = η_t S_{t−1} − θ_t ∇ℓ(M_{t−1}; x_t), M_t = M_{t−1} + S_t."""

import pytest
import torch

from conftest import assert_close, make_inputs
from titans.ops.recurrence import (
    RecurrentState,
    autograd_inner_grad,
    memory_recurrence_chunked,
    memory_recurrence_reference,
)


@pytest.mark.parametrize("impl", [memory_recurrence_reference, memory_recurrence_chunked])
def test_chunk_size_one_momentum_is_heavy_ball(impl):
    x = make_inputs(depth=2, momentum=True, decay=False, length=8)
    _, state = impl(*x.args(), x.state(), 1)
    batch = x.queries.shape[0]
    weights = [w.expand(batch, *w.shape) for w in x.initial_weights]
    surprise = [torch.zeros_like(w) for w in weights]
    for t in range(8):
        grads = autograd_inner_grad(weights, x.keys[:, :, t], x.values[:, :, t])
        eta = x.log_momentum[:, :, t, None, None].exp()
        surprise = [eta * s - x.lr[:, :, t, None, None] * g for s, g in zip(surprise, grads)]
        weights = [w + s for w, s in zip(weights, surprise)]
    for a, b in zip(state.weights, weights):
        assert_close(a, b, what="weights")
    for a, b in zip(state.momentum, surprise):
        assert_close(a, b, what="momentum")


def test_no_momentum_equals_zero_eta():
    """momentum=False is η = 0 exactly (log η → −∞)."""
    x = make_inputs(depth=2, momentum=True, length=11)
    no_momentum_state = RecurrentState.initial(x.initial_weights, 2, momentum=False)
    y0, s0 = memory_recurrence_chunked(*x.args()[:4], None, x.log_retain, no_momentum_state, 4)
    tiny = torch.full_like(x.log_momentum, -1e4)
    y1, s1 = memory_recurrence_chunked(*x.args()[:4], tiny, x.log_retain, x.state(), 4)
    assert_close(y0, y1, what="outputs")
    assert s0.momentum is None and s1.momentum is not None


def test_momentum_changes_the_result():
    x = make_inputs(depth=2, momentum=True, length=11)
    with_momentum, _ = memory_recurrence_chunked(*x.args(), x.state(), 4)
    no_momentum = make_inputs(depth=2, momentum=False, length=11)
    y, _ = memory_recurrence_chunked(*no_momentum.args(), no_momentum.state(), 4)
    assert (with_momentum - y).abs().max() > 1e-3
