"""Ablation switches (paper Table 5) change the computation the way they claim."""

import pytest
import torch

from conftest import assert_close
from titans import NeuralMemory
from titans.ops.memory_mlp import memory_forward


def make(**kw):
    torch.manual_seed(0)
    return NeuralMemory(8, heads=2, depth=kw.pop("depth", 2), expansion=2, chunk_size=3, **kw).double()


def test_no_momentum_has_no_momentum_gate_or_state():
    mem = make(momentum=False)
    assert mem.to_momentum is None
    _, s = mem(torch.randn(1, 4, 8, dtype=torch.float64))
    assert s.recurrent.momentum is None


def test_no_decay_has_no_forget_gate_and_keeps_weights_without_writes():
    mem = make(decay=False, momentum=False)
    assert mem.to_forget is None
    with torch.no_grad():
        mem.max_lr = 0.0  # θ = 0: no writes; without decay the memory stays M_0 exactly
    _, s = mem(torch.randn(1, 6, 8, dtype=torch.float64))
    for w, w0 in zip(s.recurrent.weights, mem.initial_weights):
        assert torch.equal(w[0], w0.detach())
    decaying = make(decay=True, momentum=False, decay_target="zero")  # towards M_0 it would stay (test_eq13)
    decaying.max_lr = 0.0
    _, s = decaying(torch.randn(1, 6, 8, dtype=torch.float64))
    assert (s.recurrent.weights[0][0] - decaying.initial_weights[0]).abs().max() > 1e-4


def test_linear_memory_is_one_matrix():
    mem = make(depth=1)
    assert [tuple(w.shape) for w in mem.initial_weights] == [(2, 4, 4)]
    q = torch.randn(3, 2, 5, 4, dtype=torch.float64)
    w = mem.initial_weights[0].detach()
    assert_close(memory_forward([w], q), q @ w)
    deep = make(depth=3)
    assert [tuple(w.shape) for w in deep.initial_weights] == [(2, 4, 8), (2, 8, 8), (2, 8, 4)]


def test_conv_mixes_neighbouring_tokens_and_no_conv_does_not():
    """Without the conv, a token's key depends on that token alone: its memory output at t = 0 with a
    different earlier context is unchanged; with the conv, previous tokens enter k_t directly."""
    for conv in (True, False):
        mem = make(conv=conv)
        assert (mem.convs is not None) == conv
        x = torch.randn(1, 4, 8, dtype=torch.float64)
        q_ref, _ = mem._project(x, 1, None)
        x2 = x.clone()
        x2[:, 1] += 1.0
        q_new, _ = mem._project(x2, 1, None)
        changed = (q_new[:, 2] - q_ref[:, 2]).abs().max() > 1e-9
        assert changed == conv


@pytest.mark.parametrize("switch", ["momentum", "decay", "conv"])
def test_each_switch_changes_the_output(switch):
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    on, _ = make()(x)
    off, _ = make(**{switch: False})(x)
    assert (on - off).abs().max() > 1e-6
