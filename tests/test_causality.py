"""Causality (decision 8): perturbing x_{>i} leaves y_{≤i} unchanged; perturbing x_i changes y_i."""

import pytest
import torch

from titans import NeuralMemory


@pytest.mark.parametrize("impl", ["reference", "chunked"])
@pytest.mark.parametrize("conv", [True, False])
def test_future_tokens_do_not_change_the_past(impl, conv):
    torch.manual_seed(1)
    mem = NeuralMemory(8, heads=2, depth=2, expansion=2, chunk_size=4, conv=conv, impl=impl).double()
    x = torch.randn(1, 11, 8, dtype=torch.float64)
    y, _ = mem(x)
    for i in (0, 3, 4, 6, 9):
        x2 = x.clone()
        x2[:, i + 1 :] += torch.randn_like(x2[:, i + 1 :])
        y2, _ = mem(x2)
        assert torch.equal(y2[:, : i + 1], y[:, : i + 1]), f"output {i} depends on the future"
        x3 = x.clone()
        x3[:, i] += 1.0
        y3, _ = mem(x3)
        assert (y3[:, i] - y[:, i]).abs().max() > 1e-6, f"output {i} ignores its own input"
