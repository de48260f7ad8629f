"""Eq. 13: forgetting, M_t = (1 − α_t) M_{t−1} + S_t; and decision 9, forgetting towards M_0."""

import pytest
import torch

from conftest import assert_close, make_inputs
from titans import NeuralMemory
from titans.ops.memory_mlp import inner_loss
from titans.ops.recurrence import memory_recurrence_chunked, memory_recurrence_reference


@pytest.mark.parametrize("impl", [memory_recurrence_reference, memory_recurrence_chunked])
def test_zero_learning_rate_only_decays(impl):
    """With θ = 0 and S_0 = 0 the memory only forgets: M_T = Π(1 − α_t) M_0, for any chunk size."""
    x = make_inputs(depth=2, length=10)
    x.lr.zero_()
    _, state = impl(*x.args(), x.state(), 3)
    factor = x.log_retain.sum(-1).exp()[..., None, None]
    for w, w0 in zip(state.weights, x.initial_weights):
        assert_close(w, factor * w0, what="decayed weights")


@pytest.mark.parametrize("impl", [memory_recurrence_reference, memory_recurrence_chunked])
def test_full_forgetting_erases_the_past(impl):
    """α_t = 1 at token t: M_t = S_t, so what came before t reaches the output only through momentum."""
    x = make_inputs(depth=1, momentum=False, length=6)
    x.log_retain[:, :, 3] = -1e4  # (1 − α_3) = 0
    x.lr[:, :, 3:] = 0.0  # no writes from token 3 on: M_t = 0 from t = 3 (S = −θu = 0)
    y, state = impl(*x.args(), x.state(), 2)
    assert y[:, :, 3:].abs().max() < 1e-12
    assert state.weights[0].abs().max() < 1e-12


def test_no_decay_equals_zero_alpha():
    x = make_inputs(depth=2, length=9)
    y0, _ = memory_recurrence_chunked(*x.args()[:5], None, x.state(), 4)
    y1, _ = memory_recurrence_chunked(*x.args()[:5], torch.zeros_like(x.log_retain), x.state(), 4)
    assert_close(y0, y1)


# Decision 9: forgetting towards M_0, M_t = (1 − α_t) M_{t−1} + α_t M_0 + S_t (decay_target="initial").


@pytest.mark.parametrize("impl", [memory_recurrence_reference, memory_recurrence_chunked])
def test_forgetting_towards_the_initial_weights_keeps_them_without_writes(impl):
    """θ = 0, S_0 = 0 and a start at M_0: the weights stay M_0 whatever α is (towards 0 they would shrink)."""
    x = make_inputs(depth=2, length=10)
    x.lr.zero_()
    _, state = impl(*x.args(), x.state(), 3, anchor=x.initial_weights)
    for w, w0 in zip(state.weights, x.initial_weights):
        assert_close(w, w0.expand_as(w), what="weights anchored at M_0")


@pytest.mark.parametrize("impl", [memory_recurrence_reference, memory_recurrence_chunked])
def test_forgetting_towards_an_anchor_by_hand(impl):
    """One token per chunk, no momentum: M_1 = (1 − α_1) M_0 + α_1 A − θ_1 ∇ℓ(M_0), computed by hand."""
    x = make_inputs(depth=2, momentum=False, length=1)
    anchor = [torch.randn_like(w) for w in x.initial_weights]
    _, state = impl(*x.args(), x.state(), 1, anchor=anchor)
    retain = x.log_retain[:, :, 0, None, None].exp()
    theta = x.lr[:, :, 0, None, None]
    with torch.enable_grad():
        leaves = [
            w.detach().expand(x.queries.shape[0], *w.shape).clone().requires_grad_(True) for w in x.initial_weights
        ]
        loss = inner_loss(leaves, x.keys[:, :, :1], x.values[:, :, :1]).sum()
        grads = torch.autograd.grad(loss, leaves)
    for w, w0, a, g in zip(state.weights, x.initial_weights, anchor, grads):
        assert_close(w, retain * w0 + (1 - retain) * a - theta * g, what="M_1")


def test_layer_with_forgetting_towards_m0_agrees_across_implementations():
    """NeuralMemory(decay_target="initial"): reference and chunked outputs and every parameter's gradient agree,
    and differ from the default decay towards 0."""
    torch.manual_seed(0)
    mem = NeuralMemory(12, heads=2, depth=2, expansion=2, chunk_size=3, decay_target="initial").double()
    x = torch.randn(2, 8, 12, dtype=torch.float64)
    results = {}
    for impl in ("reference", "chunked"):
        mem.impl = impl
        y, _ = mem(x)
        results[impl] = (y, torch.autograd.grad(y.square().sum(), list(mem.parameters())))
    assert_close(results["chunked"][0], results["reference"][0], what="outputs")
    for name, a, b in zip((n for n, _ in mem.named_parameters()), results["chunked"][1], results["reference"][1]):
        assert_close(a, b, rtol=1e-8, what=name)
    mem.decay_target = "zero"
    assert (mem(x)[0] - results["chunked"][0]).abs().max() > 1e-6


def test_decay_target_is_validated():
    with pytest.raises(ValueError, match="decay_target"):
        NeuralMemory(12, heads=2, decay_target="one")  # type: ignore[arg-type]
