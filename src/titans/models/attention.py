"""Attention for the Titans models: RoPE, persistent memory (eq. 19), KV caches, and three masks —
full causal (Transformer++), sliding window (SWA, MAG, MAL) and MAC's segment context (eqs. 22–23).

Everything goes through ``torch.nn.functional.scaled_dot_product_attention``. Masks are never T×T at long T:
the sliding window runs in blocks of ``window`` queries, each against its own and the previous block's keys
(a ``window × 2·window`` mask shared by all blocks), and MAC attends within a segment (masks of segment size).

Persistent tokens carry no position. Their scores use the *unrotated* query, so they look the same from every
position: queries are ``[rope(q) ‖ q]`` (2d features), sequence keys ``[rope(k) ‖ 0]`` and persistent keys
``[0 ‖ k_P]``, with the softmax scale of d. Without persistent tokens, queries and keys stay d-dimensional.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

# The backends a decoding step (one query) may use on CUDA: not cuDNN attention, which builds an execution plan
# for every new key length — about 10 ms of host time per call on an H100, met at every generated token as the
# cache grows (docs/benchmarks.md) — while these have no per-shape cost.
DECODE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def rope(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """Rotary position embedding (Llama, rotate-half pairing) of x (…, T, d) at integer ``positions`` (T,).

    Angles are computed in float64, so large positions (long generation) keep their precision.
    """
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float64, device=x.device) / half)
    angles = positions.to(device=x.device, dtype=torch.float64)[:, None] * freqs
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def visibility_mask(n_queries: int, n_keys: int, window: int | None, device: torch.device) -> Tensor:
    """(n_queries, n_keys) bool, True = visible. The queries are the last ``n_queries`` of the key positions:
    query r sits at p = n_keys − n_queries + r and sees key j iff j ≤ p and (no window or j > p − window)."""
    query_pos = torch.arange(n_keys - n_queries, n_keys, device=device)[:, None]
    key_pos = torch.arange(n_keys, device=device)[None, :]
    mask = key_pos <= query_pos
    if window is not None:
        mask &= key_pos > query_pos - window
    return mask


@dataclass(frozen=True)
class KVCache:
    """Keys (already rotated at their positions) and values of earlier tokens: (B, H, n, d) each."""

    keys: Tensor
    values: Tensor

    @property
    def length(self) -> int:
        return int(self.keys.shape[2])

    def detach(self) -> KVCache:
        return KVCache(self.keys.detach(), self.values.detach())


def extend(cache: KVCache | None, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """[cached ‖ new] keys and values (the cache is cast to the new tensors' dtype)."""
    if cache is None:
        return keys, values
    return (
        torch.cat([cache.keys.to(keys.dtype), keys], dim=2),
        torch.cat([cache.values.to(values.dtype), values], dim=2),
    )


def keep_last(keys: Tensor, values: Tensor, n: int | None) -> KVCache | None:
    """The cache of the last ``n`` tokens (all when ``n`` is None), copied so it owns its memory."""
    if n is None:
        return KVCache(keys, values)
    if n <= 0:
        return None
    if keys.shape[2] <= n:
        return KVCache(keys, values)
    return KVCache(keys[:, :, -n:].clone(), values[:, :, -n:].clone())


@dataclass(frozen=True)
class PersistentKV:
    """Keys ``[0 ‖ k_P]`` (1, H, N_p, 2d) and values (1, H, N_p, d) of the persistent tokens (eq. 19)."""

    keys: Tensor
    values: Tensor


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, prefix: PersistentKV | None, scale: float) -> Tensor:
    """softmax(q kᵀ·scale + mask) v over [P ‖ k], the persistent tokens visible to every query."""
    if prefix is not None:
        batch = (k.shape[0], -1, -1, -1)
        k = torch.cat([prefix.keys.to(k.dtype).expand(batch), k], dim=2)
        v = torch.cat([prefix.values.to(v.dtype).expand(batch), v], dim=2)
        if mask is not None:
            visible = mask.new_ones(mask.shape[0], prefix.keys.shape[2])
            mask = torch.cat([visible, mask], dim=1)
    backends = sdpa_kernel(DECODE_BACKENDS) if q.is_cuda and q.shape[2] == 1 else contextlib.nullcontext()
    with backends:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, prefix: PersistentKV | None, scale: float) -> Tensor:
    """Full causal attention of the last T = q.shape[2] of the keys (Transformer++)."""
    n_queries, n_keys = q.shape[2], k.shape[2]
    if prefix is None and n_queries == n_keys:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    mask = None if n_queries == 1 else visibility_mask(n_queries, n_keys, None, q.device)
    return attend(q, k, v, mask, prefix, scale)


def sliding_window_attention(
    q: Tensor, k: Tensor, v: Tensor, window: int, prefix: PersistentKV | None, scale: float
) -> Tensor:
    """Each of the T queries (the last T keys' positions) sees itself and the ``window − 1`` keys before it.

    The first ``window`` queries attend to all keys before them directly; the rest go in blocks of
    ``window`` queries, each block against its own and the previous block's keys, with one shared
    ``window × 2·window`` mask, folded into the batch dimension.
    """
    n_queries = q.shape[2]
    cached = k.shape[2] - n_queries
    first = min(n_queries, window)
    head = attend(
        q[:, :, :first],
        k[:, :, : cached + first],
        v[:, :, : cached + first],
        visibility_mask(first, cached + first, window, q.device),
        prefix,
        scale,
    )
    rest = n_queries - first
    if rest == 0:
        return head
    blocks = math.ceil(rest / window)
    pad = blocks * window - rest
    q_blocks = _fold(_pad_time(q[:, :, first:], pad), window)
    k_pairs, v_pairs = (_pairs(_pad_time(t[:, :, cached:], pad), window) for t in (k, v))
    mask = visibility_mask(window, 2 * window, window, q.device)
    out = _unfold(attend(q_blocks, k_pairs, v_pairs, mask, prefix, scale), q.shape[0])
    return torch.cat([head, out[:, :, :rest]], dim=2)


def segment_attention(
    q: Tensor, context: tuple[Tensor, Tensor] | None, k: Tensor, v: Tensor, prefix: PersistentKV | None, scale: float
) -> Tensor:
    """MAC (eqs. 22–23): Attn over [P ‖ h ‖ S] within one segment. The T queries are the segment's last T
    tokens; query i sees every persistent token, h_{≤i} (``context``, the retrieved memory) and S_{≤i}."""
    causal = visibility_mask(q.shape[2], k.shape[2], None, q.device)
    if context is None:
        return attend(q, k, v, causal, prefix, scale)
    context_k, context_v = context
    keys, values = torch.cat([context_k, k], dim=2), torch.cat([context_v, v], dim=2)
    return attend(q, keys, values, torch.cat([causal, causal], dim=1), prefix, scale)


def _pad_time(x: Tensor, pad: int) -> Tensor:
    return F.pad(x, (0, 0, 0, pad)) if pad else x


def _fold(x: Tensor, block: int) -> Tensor:
    """(B, H, n·block, E) → (B·n, H, block, E)."""
    blocks = x.unflatten(2, (-1, block)).transpose(1, 2)
    return blocks.flatten(0, 1)


def _pairs(x: Tensor, block: int) -> Tensor:
    """(B, H, (n+1)·block, E) → (B·n, H, 2·block, E): blocks b and b+1 side by side."""
    blocks = x.unflatten(2, (-1, block))
    pairs = torch.cat([blocks[:, :, :-1], blocks[:, :, 1:]], dim=3)
    return pairs.transpose(1, 2).flatten(0, 1)


def _unfold(x: Tensor, batch: int) -> Tensor:
    """(B·n, H, block, E) → (B, H, n·block, E)."""
    return x.unflatten(0, (batch, -1)).transpose(1, 2).flatten(2, 3)


class Attention(nn.Module):
    """Multi-head attention projections (W_Q, W_K, W_V, W_O) with RoPE and optional persistent tokens.

    The token mixer :meth:`mix` takes the normalised block input ``u`` (B, T, dim), an
    optional :class:`KVCache` of earlier tokens and the absolute position of ``u``'s first token; it
    returns the output (B, T, dim) and the cache for the next call. MAC uses the pieces directly.
    """

    def __init__(self, dim: int, heads: int, rope_theta: float, init_std: float, out_std: float):
        super().__init__()
        self.heads, self.head_dim, self.rope_theta = heads, dim // heads, rope_theta
        self.scale = self.head_dim**-0.5
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        for linear, std in ((self.to_q, init_std), (self.to_kv, init_std), (self.to_out, out_std)):
            nn.init.normal_(linear.weight, std=std)

    def _heads(self, x: Tensor) -> Tensor:
        """(B, T, H·d) → (B, H, T, d)."""
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def queries(self, u: Tensor, positions: Tensor, persistent: bool) -> Tensor:
        """rope(q), or [rope(q) ‖ q] when persistent tokens take part (see the module docstring)."""
        q = self._heads(self.to_q(u))
        q_rot = rope(q, positions, self.rope_theta)
        return torch.cat([q_rot, q], dim=-1) if persistent else q_rot

    def keys_values(self, u: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """rope(k) and v of tokens u (B, T, dim) at ``positions``: (B, H, T, d) each."""
        k, v = self._heads(self.to_kv(u)).chunk(2, dim=-1)
        return rope(k, positions, self.rope_theta), v

    def persistent(self, p: Tensor) -> PersistentKV:
        """Keys [0 ‖ k_P] and values of the (normalised) persistent tokens p (N_p, dim); no RoPE."""
        k, v = self._heads(self.to_kv(p.unsqueeze(0))).chunk(2, dim=-1)
        return PersistentKV(torch.cat([torch.zeros_like(k), k], dim=-1), v)

    @staticmethod
    def widen_keys(k: Tensor, prefix: PersistentKV | None) -> Tensor:
        """[rope(k) ‖ 0] to match [rope(q) ‖ q] when persistent tokens take part."""
        return k if prefix is None else torch.cat([k, torch.zeros_like(k)], dim=-1)

    def output(self, attended: Tensor) -> Tensor:
        """W_O of the concatenated heads: (B, H, T, d) → (B, T, dim)."""
        return self.to_out(attended.transpose(1, 2).flatten(2))

    def mix(
        self, u: Tensor, cache: KVCache | None, position: int, prefix: PersistentKV | None, window: int | None
    ) -> tuple[Tensor, KVCache | None]:
        """Full causal attention (``window=None``, the Transformer++ baseline; the cache keeps every token) or
        sliding-window attention (SWA*, persistent tokens always visible; the cache keeps the last
        ``window − 1`` tokens)."""
        positions = torch.arange(position, position + u.shape[1], device=u.device)
        q = self.queries(u, positions, prefix is not None)
        keys, values = extend(cache, *self.keys_values(u, positions))
        wide = self.widen_keys(keys, prefix)
        if window is None:
            out = causal_attention(q, wide, values, prefix, self.scale)
        else:
            out = sliding_window_attention(q, wide, values, window, prefix, self.scale)
        return self.output(out), keep_last(keys, values, None if window is None else window - 1)


__all__ = [
    "Attention",
    "KVCache",
    "PersistentKV",
    "attend",
    "causal_attention",
    "extend",
    "keep_last",
    "rope",
    "segment_attention",
    "sliding_window_attention",
    "visibility_mask",
]
