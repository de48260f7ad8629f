"""On a CUDA GPU: the chunked path agrees with the reference in fp32 and under bf16 autocast (skips on CPU)."""

import pytest
import torch

from titans import NeuralMemory

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _relative(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("depth", [1, 2])
def test_chunked_matches_reference_on_gpu(depth):
    torch.manual_seed(0)
    mem = NeuralMemory(64, heads=4, depth=depth, chunk_size=8).cuda()
    x = torch.randn(2, 37, 64, device="cuda", requires_grad=True)
    outs = {}
    for impl in ("reference", "chunked"):
        mem.impl = impl
        y, _ = mem(x)
        (gx,) = torch.autograd.grad(y.square().sum(), x)
        outs[impl] = (y, gx)
    # fp32 matmuls on the GPU may use TF32-free paths; allow for reassociation only.
    assert _relative(outs["chunked"][0], outs["reference"][0]) < 1e-4
    assert _relative(outs["chunked"][1], outs["reference"][1]) < 1e-4


def test_bf16_autocast_close_to_fp32_on_gpu():
    torch.manual_seed(0)
    mem = NeuralMemory(128, heads=2, chunk_size=16).cuda()
    x = torch.randn(2, 100, 128, device="cuda")
    y32, _ = mem(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y16, s16 = mem(x)
    assert s16.recurrent.weights[0].dtype == torch.float32
    assert _relative(y16, y32) < 3e-2
