"""The chunk-parallel closed form equals the token-by-token reference: outputs, final state, gradients."""

import pytest
import torch

from conftest import assert_close, assert_states_close, make_inputs
from titans import NeuralMemory
from titans.ops.recurrence import memory_recurrence_chunked, memory_recurrence_reference

CASES = [
    # (chunk, length, heads, depth, momentum, decay)
    (1, 5, 1, 1, True, True),
    (3, 10, 2, 2, True, True),
    (16, 37, 3, 2, True, True),
    (64, 70, 1, 3, True, True),
    (3, 11, 2, 3, False, True),
    (4, 9, 2, 2, True, False),
    (5, 12, 1, 1, False, False),
    (16, 16, 2, 2, False, True),
]


@pytest.mark.parametrize(("chunk", "length", "heads", "depth", "momentum", "decay"), CASES)
def test_outputs_state_and_gradients_agree(chunk, length, heads, depth, momentum, decay):
    x = make_inputs(
        length=length,
        heads=heads,
        depth=depth,
        momentum=momentum,
        decay=decay,
        requires_grad=True,
        lr_scale=0.3,
        seed=chunk + length,
    )
    y_ref, s_ref = memory_recurrence_reference(*x.args(), x.state(), chunk)
    y_chk, s_chk = memory_recurrence_chunked(*x.args(), x.state(), chunk)
    assert_close(y_chk, y_ref, rtol=1e-8, what="outputs")
    assert_states_close(s_chk, s_ref, rtol=1e-8)
    cotangent = torch.randn_like(y_ref)
    state_probe = [torch.randn_like(w) for w in s_ref.weights]

    def objective(y, s):
        return (y * cotangent).sum() + sum((w * p).sum() for w, p in zip(s.weights, state_probe))

    leaves = x.leaves()
    g_ref = torch.autograd.grad(objective(y_ref, s_ref), leaves)
    g_chk = torch.autograd.grad(objective(y_chk, s_chk), leaves)
    for i, (a, b) in enumerate(zip(g_chk, g_ref)):
        assert_close(a, b, rtol=1e-7, what=f"gradient of leaf {i}")


@pytest.mark.parametrize("depth", [1, 2])
def test_layer_gradients_agree_for_every_parameter(depth):
    """Through the whole layer: x, every projection, every gate, the conv and M_0."""
    torch.manual_seed(depth)
    mem = NeuralMemory(12, heads=2, depth=depth, expansion=2, chunk_size=3).double()
    x = torch.randn(2, 8, 12, dtype=torch.float64, requires_grad=True)
    grads = {}
    for impl in ("reference", "chunked"):
        mem.impl = impl
        y, _ = mem(x)
        params = [x, *mem.parameters()]
        grads[impl] = torch.autograd.grad((y * torch.linspace(-1, 1, 12, dtype=torch.float64)).sum(), params)
    names = ["x", *(n for n, _ in mem.named_parameters())]
    for name, a, b in zip(names, grads["chunked"], grads["reference"]):
        assert_close(a, b, rtol=1e-8, what=name)
        assert a.abs().max() > 0, f"{name} gets no gradient"


def test_gradcheck_chunked_path():
    x = make_inputs(batch=1, heads=1, length=5, head_dim=3, depth=2, expansion=1, requires_grad=True, seed=3)

    def fn(q, k, v, lr, log_eta, log_keep, w1, w2):
        from titans.ops.recurrence import RecurrentState

        state = RecurrentState.initial([w1, w2], 1, momentum=True)
        y, s = memory_recurrence_chunked(q, k, v, lr, log_eta, log_keep, state, 2)
        return y, *s.weights

    assert torch.autograd.gradcheck(
        fn, (x.queries, x.keys, x.values, x.lr, x.log_momentum, x.log_retain, *x.initial_weights)
    )


@pytest.mark.parametrize("group", [1, 2, 5])
def test_checkpointed_chunks_equal_plain_chunks(group):
    """Recomputing chunks from state checkpoints gives the same outputs, state and gradients."""
    x = make_inputs(length=23, depth=2, requires_grad=True, seed=group)
    y0, s0 = memory_recurrence_chunked(*x.args(), x.state(), 4)
    y1, s1 = memory_recurrence_chunked(*x.args(), x.state(), 4, checkpoint_chunks=group)
    assert_close(y1, y0)
    assert_states_close(s1, s0)
    g0 = torch.autograd.grad(y0.square().sum() + s0.weights[0].sum(), x.leaves())
    g1 = torch.autograd.grad(y1.square().sum() + s1.weights[0].sum(), x.leaves())
    for i, (a, b) in enumerate(zip(g1, g0)):
        assert_close(a, b, what=f"gradient of leaf {i}")


def test_compiled_chunk_step_equals_eager():
    """``compile_step=True`` (torch.compile of the chunk body) computes the same function, gradients too.

    One chunk shape only (length a multiple of the chunk), so it compiles once."""
    x = make_inputs(length=8, depth=2, head_dim=4, requires_grad=True, seed=11)
    y0, s0 = memory_recurrence_chunked(*x.args(), x.state(), 4)
    y1, s1 = memory_recurrence_chunked(*x.args(), x.state(), 4, compile_step=True)
    assert_close(y1, y0, rtol=1e-10)
    assert_states_close(s1, s0, rtol=1e-10)
    g0 = torch.autograd.grad(y0.square().sum(), x.leaves())
    g1 = torch.autograd.grad(y1.square().sum(), x.leaves())
    for i, (a, b) in enumerate(zip(g1, g0)):
        assert_close(a, b, rtol=1e-10, what=f"gradient of leaf {i}")
