"""Batched greedy decoding of the text tasks (S-NIAH, BABILong) against one prompt at a time."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from titans import TitansLM
from titans.models import preset
from titans.tasks.evaluate import decoding_batches, greedy_continuation, greedy_continuations


@pytest.mark.parametrize("variant", ["mac", "lmm", "swa", "transformer"])
def test_batched_greedy_decoding_equals_one_prompt_at_a_time(variant):
    """Prompts of different lengths, read in pieces that end inside them, crossing MAC segments; float64."""
    torch.manual_seed(0)
    model = TitansLM(preset("tiny", variant, vocab_size=40)).double().eval()
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 40, (n,), generator=generator).tolist() for n in (9, 13, 13, 21, 70)]
    device = torch.device("cpu")
    expected = [greedy_continuation(model, prompt, 6, 8, device) for prompt in prompts]
    assert greedy_continuations(model, prompts, 6, 8, device) == expected
    assert greedy_continuations(model, prompts[:1], 6, 8, device) == expected[:1]
    assert all(len(tokens) == 6 for tokens in expected)
    with pytest.raises(ValueError, match="empty"):
        greedy_continuations(model, [[1, 2], []], 3, 8, device)


def test_decoding_batches_keep_one_target_length_and_close_prompt_lengths():
    lengths = [(2048, 2030), (4096, 4070), (2048, 2035), (2048, 1700), (4096, 4080), (2048, 2033)]
    samples = [SimpleNamespace(target_length=t, prompt_ids=[0] * n) for t, n in lengths]
    batches = decoding_batches(samples, batch_size=2, max_spread=100)  # type: ignore[arg-type]
    assert sorted(i for batch in batches for i in batch) == list(range(len(samples)))
    for batch in batches:
        assert len(batch) <= 2
        assert len({samples[i].target_length for i in batch}) == 1
        sizes = [len(samples[i].prompt_ids) for i in batch]
        assert max(sizes) - min(sizes) <= 100
    assert [3] in batches  # 1,700 tokens: more than 100 from every other 2K prompt
