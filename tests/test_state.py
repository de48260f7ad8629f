"""State continues the sequence exactly: one call == pieces == token by token (``step``)."""

import pytest
import torch

from conftest import assert_close, assert_states_close, make_inputs
from titans import NeuralMemory
from titans.ops.recurrence import memory_recurrence_chunked, memory_recurrence_reference


@pytest.mark.parametrize("impl", [memory_recurrence_reference, memory_recurrence_chunked])
def test_every_split_point_of_the_recurrence(impl):
    x = make_inputs(depth=2, length=11)
    y, state = impl(*x.args(), x.state(), 4)
    for a in range(12):
        first = [t[:, :, :a] if t is not None else None for t in x.args()]
        second = [t[:, :, a:] if t is not None else None for t in x.args()]
        y1, s1 = impl(*first, x.state(), 4)
        y2, s2 = impl(*second, s1, 4)
        assert_close(torch.cat([y1, y2], 2), y, what=f"split at {a}")
        assert_states_close(s2, state)


@pytest.fixture(scope="module")
def layer():
    torch.manual_seed(0)
    return NeuralMemory(16, heads=2, depth=2, expansion=2, chunk_size=4).double()


def test_layer_split_points_including_inside_chunks(layer):
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    y, state = layer(x)
    for a in (1, 3, 4, 5, 8, 12):
        y1, s1 = layer(x[:, :a])
        y2, s2 = layer(x[:, a:], s1)
        assert_close(torch.cat([y1, y2], 1), y, what=f"split at {a}")
        assert_states_close(s2.recurrent, state.recurrent)
    pieces, s = [], None
    for lo, hi in ((0, 2), (2, 3), (3, 9), (9, 13)):
        out, s = layer(x[:, lo:hi], s)
        pieces.append(out)
    assert_close(torch.cat(pieces, 1), y, what="three splits")


def test_step_equals_one_call(layer):
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    y, state = layer(x)
    s, outs = None, []
    for t in range(10):
        out, s = layer.step(x[:, t], s)
        outs.append(out)
    assert_close(torch.stack(outs, 1), y, what="step")
    assert_states_close(s.recurrent, state.recurrent)


def test_step_state_size_is_fixed(layer):
    s = None
    sizes = set()
    for _ in range(9):
        _, s = layer.step(torch.randn(1, 16, dtype=torch.float64), s)
        tensors = [*s.recurrent.weights, *s.recurrent.momentum, *s.recurrent.chunk_start, *s.conv]
        sizes.add(sum(t.numel() for t in tensors))
    assert len(sizes) == 1


def test_detach_cuts_the_graph(layer):
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    _, s = layer(x)
    assert s.recurrent.weights[0].requires_grad
    d = s.detach()
    assert not d.recurrent.weights[0].requires_grad and d.recurrent.offset == s.recurrent.offset
