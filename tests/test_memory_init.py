"""The memory's initialisation keeps the outer gradient finite and O(1) (decision 7 of docs/equations.md).

Before it, the last memory layer started at std 1/sqrt(fan-in): the pre-LayerNorm output had std ~0.05, the
LN backward (∝ 1/std) amplified every inner gradient, and the tiny MAC model's gradient norm at init was ~350
on a 512-byte row (~1.6e6 on 1024 bytes; NaN after a few dozen steps of the small config on an H100).
"""

from __future__ import annotations

import pytest
import torch

from titans import TitansLM
from titans.models import preset


@pytest.mark.parametrize("variant", ["mac", "lmm"])
def test_gradient_norm_at_init_is_moderate(variant):
    torch.manual_seed(0)
    model = TitansLM(preset("tiny", variant))
    tokens = torch.randint(0, 256, (1, 512))
    logits = model(tokens).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 256), tokens[:, 1:].reshape(-1))
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    assert torch.isfinite(norm) and norm < 50, f"{variant}: gradient norm at init {norm:.3g}"


def test_deep_memory_last_layer_starts_at_unit_scale():
    from titans.layers.neural_memory import NeuralMemory

    torch.manual_seed(0)
    deep, linear = NeuralMemory(64, heads=2, depth=2), NeuralMemory(64, heads=2, depth=1)
    assert deep.initial_weights[-1].std().item() == pytest.approx(1.0, rel=0.1)
    assert deep.initial_weights[0].std().item() == pytest.approx(32**-0.5, rel=0.1)
    assert linear.initial_weights[0].std().item() == pytest.approx(32**-0.5, rel=0.1)


def _pre_norm_std(memory) -> float:
    """Std of the last layer's output (what the memory's LayerNorm divides by) for unit-norm keys, at init."""
    keys = torch.nn.functional.normalize(torch.randn(memory.heads, 256, memory.head_dim), dim=-1)
    hidden = keys
    for weight in memory.initial_weights[:-1]:
        hidden = torch.nn.functional.gelu(hidden @ weight)
    return (hidden @ memory.initial_weights[-1]).std().item()


def test_deeper_memories_start_with_the_pre_norm_scale_of_depth_2():
    """Hidden → hidden layers start at std 2/sqrt(fan-in) (GELU halves small inputs): at 1/sqrt(fan-in) each
    extra layer halved the pre-LN std (depth 4: ~0.2 against ~0.9) and the first chunk's inner step overshot."""
    from titans.layers.neural_memory import NeuralMemory

    torch.manual_seed(0)
    scales = {depth: _pre_norm_std(NeuralMemory(128, heads=2, depth=depth)) for depth in (2, 3, 4)}
    for depth in (3, 4):
        assert scales[depth] == pytest.approx(scales[2], rel=0.35), scales
    middle = NeuralMemory(128, heads=2, depth=3).initial_weights[1]
    assert middle.std().item() == pytest.approx(2 * middle.shape[-2] ** -0.5, rel=0.1)
