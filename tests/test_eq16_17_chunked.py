"""Eq. 16: inside a chunk the gradients are taken at the chunk-start weights M_{t'};
eq. 17: for a linear memory without momentum one chunk is a single matrix product."""

import pytest
import torch

from conftest import assert_close, make_inputs
from titans.ops.recurrence import autograd_inner_grad, memory_recurrence_chunked, memory_recurrence_reference


@pytest.mark.parametrize("chunk_size", [2, 3, 5])
def test_gradients_at_chunk_start(chunk_size):
    """An independent loop: u_t = ∇ℓ(M_{t'}) with t' = t − (t mod b), then momentum and decay."""
    x = make_inputs(depth=2, length=11)
    _, state = memory_recurrence_chunked(*x.args(), x.state(), chunk_size)
    batch = x.queries.shape[0]
    weights = [w.expand(batch, *w.shape) for w in x.initial_weights]
    surprise = [torch.zeros_like(w) for w in weights]
    for t in range(11):
        if t % chunk_size == 0:
            start = weights
        grads = autograd_inner_grad(start, x.keys[:, :, t], x.values[:, :, t])
        eta = x.log_momentum[:, :, t, None, None].exp()
        keep = x.log_retain[:, :, t, None, None].exp()
        surprise = [eta * s - x.lr[:, :, t, None, None] * g for s, g in zip(surprise, grads)]
        weights = [keep * w + s for w, s in zip(weights, surprise)]
    for a, b in zip(state.weights, weights):
        assert_close(a, b, what="weights")


def test_chunking_matters():
    """Chunk size changes where gradients are taken, so it changes the result (deep memory)."""
    x = make_inputs(depth=2, length=12)
    y1, _ = memory_recurrence_reference(*x.args(), x.state(), 1)
    y4, _ = memory_recurrence_reference(*x.args(), x.state(), 4)
    assert (y1 - y4).abs().max() > 1e-4


def test_eq17_linear_memory_one_chunk_is_one_matmul():
    """W_b = β_b W_0 − Σ_i θ_i (β_b/β_i) ∇ℓ(W_0; x_i) = β_b W_0 − Kᵀ diag(θ β_b/β) (K W_0 − V)
    (row-vector convention), β_i = Π_{j≤i} (1 − α_j)."""
    b = 8
    x = make_inputs(depth=1, momentum=False, length=b)
    _, state = memory_recurrence_chunked(*x.args(), x.state(), b)
    w0 = x.initial_weights[0].expand(2, *x.initial_weights[0].shape)
    log_beta = x.log_retain.cumsum(-1)
    beta_b = log_beta[..., -1:].exp()
    scale = x.lr * (log_beta[..., -1:] - log_beta).exp()
    expected = beta_b[..., None] * w0 - x.keys.transpose(-1, -2) @ (scale[..., None] * (x.keys @ w0 - x.values))
    assert_close(state.weights[0], expected)
