"""Decision 5: inner weights, momentum and gate products stay fp32 under bf16 autocast."""

import torch

from titans import NeuralMemory


def test_inner_state_is_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    mem = NeuralMemory(16, heads=2, chunk_size=4)
    x = torch.randn(2, 9, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = mem(x)
    assert all(w.dtype == torch.float32 for w in state.recurrent.weights)
    assert all(s.dtype == torch.float32 for s in state.recurrent.momentum)
    y32, _ = mem(x)
    rel = (y.float() - y32).norm() / y32.norm()
    assert rel < 3e-2, f"bf16 autocast output too far from fp32: {rel:.3e}"


def test_bf16_input_under_autocast():
    """bf16 activations (as from a bf16 model) work, with the gates computed in fp32."""
    torch.manual_seed(0)
    mem = NeuralMemory(16, heads=2, chunk_size=4)
    x = torch.randn(2, 9, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = mem(x.bfloat16())
    y32, _ = mem(x)
    assert state.recurrent.weights[0].dtype == torch.float32
    assert ((y.float() - y32).norm() / y32.norm()) < 3e-2
