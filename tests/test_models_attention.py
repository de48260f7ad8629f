"""The attention pieces against dense references: RoPE is relative, the blocked sliding window and MAC's
segment mask equal an explicit mask, persistent tokens look the same from every position."""

from __future__ import annotations

import math

import pytest
import torch

from titans.models.attention import (
    Attention,
    PersistentKV,
    causal_attention,
    rope,
    segment_attention,
    sliding_window_attention,
)

F64 = torch.float64


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, prefix: PersistentKV | None = None):
    """softmax with an explicit (T, S) mask, the persistent tokens prepended and always visible."""
    if prefix is not None:
        k = torch.cat([prefix.keys.expand(k.shape[0], -1, -1, -1), k], dim=2)
        v = torch.cat([prefix.values.expand(v.shape[0], -1, -1, -1), v], dim=2)
        mask = torch.cat([torch.ones(mask.shape[0], prefix.keys.shape[2], dtype=torch.bool), mask], dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(v.shape[-1])
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v


def window_mask(n_queries: int, n_keys: int, window: int | None) -> torch.Tensor:
    i = torch.arange(n_keys - n_queries, n_keys)[:, None]
    j = torch.arange(n_keys)[None, :]
    return (j <= i) & ((j > i - window) if window is not None else True)


def test_rope_scores_depend_only_on_the_distance() -> None:
    q, k = randn(1, 1, 1, 8), randn(1, 1, 1, 8, seed=1)

    def score(i: int, j: int) -> float:
        return float((rope(q, torch.tensor([i]), 10000.0) * rope(k, torch.tensor([j]), 10000.0)).sum())

    assert score(7, 3) == pytest.approx(score(1004, 1000), abs=1e-10)
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-6)


@pytest.mark.parametrize("with_prefix", [False, True])
@pytest.mark.parametrize(("cached", "length", "window"), [(0, 3, 4), (0, 17, 4), (3, 17, 4), (2, 9, 3), (0, 6, 1)])
def test_sliding_window_blocks_equal_a_dense_mask(cached: int, length: int, window: int, with_prefix: bool) -> None:
    d, e = 4, 8 if with_prefix else 4
    q, k, v = randn(2, 3, length, e), randn(2, 3, cached + length, e, seed=1), randn(2, 3, cached + length, d, seed=2)
    prefix = PersistentKV(randn(1, 3, 2, e, seed=3), randn(1, 3, 2, d, seed=4)) if with_prefix else None
    out = sliding_window_attention(q, k, v, window, prefix, d**-0.5)
    torch.testing.assert_close(out, dense(q, k, v, window_mask(length, cached + length, window), prefix))


@pytest.mark.parametrize(("cached", "length"), [(0, 5), (4, 3), (4, 1)])
def test_causal_attention_with_a_cache_equals_a_dense_mask(cached: int, length: int) -> None:
    q, k, v = randn(2, 2, length, 4), randn(2, 2, cached + length, 4, seed=1), randn(2, 2, cached + length, 4, seed=2)
    out = causal_attention(q, k, v, None, 0.5)
    torch.testing.assert_close(out, dense(q, k, v, window_mask(length, cached + length, None)))


def test_segment_attention_sees_h_and_s_up_to_itself() -> None:
    """Token i of the segment sees h_{≤i} and S_{≤i} (decision 6), here 2 earlier tokens cached."""
    q = randn(1, 2, 3, 4)
    hk, hv, k, v = (randn(1, 2, 5, 4, seed=s) for s in (1, 2, 3, 4))
    out = segment_attention(q, (hk, hv), k, v, None, 0.5)
    causal = window_mask(3, 5, None)
    expected = dense(q, torch.cat([hk, k], 2), torch.cat([hv, v], 2), torch.cat([causal, causal], 1))
    torch.testing.assert_close(out, expected)


def test_persistent_tokens_look_the_same_from_every_position() -> None:
    """Shifting all positions changes nothing: RoPE is relative and the persistent keys carry no position."""
    torch.manual_seed(0)
    attn = Attention(16, 2, 10000.0, 0.5, 0.5).double()
    prefix = attn.persistent(randn(3, 16, seed=5))
    u = randn(2, 7, 16, seed=6)
    at_zero, _ = attn.mix(u, None, 0, prefix, window=4)
    far, _ = attn.mix(u, None, 123_456, prefix, window=4)
    torch.testing.assert_close(far, at_zero)
