"""A small demonstration: the neural memory memorises key/value pairs at test time, with no outer training."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from titans.ops.memory_mlp import memory_forward, memory_layer_shapes
from titans.ops.recurrence import RecurrentState, memory_recurrence_chunked


def recall_error(pairs: int, head_dim: int, depth: int, passes: int, lr: float, seed: int = 0) -> tuple[float, float]:
    """Relative recall error ‖M(k) − v‖/‖v‖ of random pairs before and after reading them ``passes`` times."""
    g = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(1, 1, pairs, head_dim, generator=g), dim=-1)
    values = torch.randn(1, 1, pairs, head_dim, generator=g)
    shapes = memory_layer_shapes(head_dim, depth, expansion=4)
    initial = [torch.randn(1, i, o, generator=g) * i**-0.5 for i, o in shapes]
    state = RecurrentState.initial(initial, 1, momentum=True)
    before = memory_forward(state.weights, keys) - values
    seq_k, seq_v = keys.repeat(1, 1, passes, 1), values.repeat(1, 1, passes, 1)
    n = seq_k.shape[2]
    lr_t = torch.full((1, 1, n), lr)
    log_eta = torch.full((1, 1, n), -0.7)  # η ≈ 0.5
    log_keep = torch.zeros(1, 1, n)  # no forgetting
    _, state = memory_recurrence_chunked(seq_k, seq_k, seq_v, lr_t, log_eta, log_keep, state, chunk_size=16)
    after = memory_forward(state.weights, keys) - values
    return (before.norm() / values.norm()).item(), (after.norm() / values.norm()).item()


def run_demo() -> None:
    print("Titans neural memory: memorising random key/value pairs at test time (no outer training).")
    print("Each row reads the pairs `passes` times through the chunked recurrence (chunk 16, momentum),")
    print("then queries every key. Error = ‖M(k) − v‖ / ‖v‖ (1.0 = knows nothing).\n")
    print("A 32-dimensional linear memory holds at most 32 pairs; the deep memory holds more.\n")
    print(f"{'memory':<16}{'pairs':>6}{'passes':>8}{'before':>9}{'after':>9}")
    for depth, name, lr in ((1, "linear (d=32)", 0.4), (2, "MLP, 2 layers", 0.05)):
        for pairs, passes in ((16, 1), (16, 16), (64, 16), (128, 16)):
            before, after = recall_error(pairs, 32, depth, passes, lr)
            print(f"{name:<16}{pairs:>6}{passes:>8}{before:>9.3f}{after:>9.3f}")
