"""A tiny model of every variant learns a synthetic task on the CPU in seconds.

Task: x_t = (x_{t−1} + x_{t−2}) mod V after two random tokens — the next token needs the two before it, so a
model must mix tokens (attention, memory, or both) to get below chance (ln V).
"""

from __future__ import annotations

import math

import pytest
import torch

from test_models_consistency import one_thread  # noqa: F401 (autouse fixture)
from titans.models import VARIANTS, TitansLM, preset

VOCAB, LENGTH, BATCH, STEPS = 8, 16, 16, 60


def batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.empty(BATCH, LENGTH + 1, dtype=torch.long)
    x[:, :2] = torch.randint(0, VOCAB, (BATCH, 2), generator=generator)
    for t in range(2, LENGTH + 1):
        x[:, t] = (x[:, t - 1] + x[:, t - 2]) % VOCAB
    labels = x[:, 1:].clone()
    labels[:, 0] = -100  # the second token is random
    return x[:, :-1], labels


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_model_learns_the_task(variant: str) -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    config = preset("tiny", variant, vocab_size=VOCAB, depth=1, chunk_size=8, segment_len=8, window=4)
    model = TitansLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(STEPS):
        inputs, labels = batch(generator)
        loss = model(inputs, labels=labels).loss
        assert loss is not None
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    final = sum(losses[-5:]) / 5
    assert final < 0.5 * math.log(VOCAB), f"{variant}: loss {final:.3f}, chance {math.log(VOCAB):.3f}"
