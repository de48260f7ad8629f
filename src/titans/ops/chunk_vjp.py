"""One chunk of the memory recurrence with a hand-written backward — the naive twin of the fused kernels.

The fused path (:mod:`titans.ops.fused`) runs whole chunks whose state starts at a chunk boundary, so the
gradients are taken at the entering weights (eq. 16, t' = chunk start). For one chunk of n tokens with
mixing coefficients D (retain, n), c (carry, n), Γ (grad_mix, n×n), and the last rows γ = Γ[n−1], π (the
momentum mix's last row) and A_n (the momentum decay at the last token) — see :class:`ChunkMixing`:

    key path     H = K W1, A = σ(H), Z = A W2, Err = K + LN(Z) − V, Δ2 = J_LN(Z) Err, Δ1 = (Δ2 W2ᵀ) ⊙ σ'(H)
    query path   per layer l with input X_l (X_1 = Q, X_2 = σ(Hq)) and key-side input A_l (K, A):
                 H_l = D ⊙ (X_l W_l) + c ⊙ (X_l S_l) − ((X_l A_lᵀ) ⊙ Γ) Δ_l           (dual form)
                 Y = Q + LN(H_2)
    state        W_l' = D_n W_l + c_n S_l − A_lᵀ (γ ⊙ Δ_l),   S_l' = A_n S_l − A_lᵀ (π ⊙ Δ_l)

(depth 1: M(x) = x W, Err = K W − V = Δ1 and Y = H_1). :func:`chunk_forward` computes this and
:func:`chunk_backward` its vector-Jacobian product by hand, including the second-order term of the
LayerNorm backward. Both work on any leading batch dimensions and are tested against ``torch.autograd``
of :func:`titans.ops.recurrence._chunk_span` in float64. The Triton kernels compute exactly these lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from titans.ops.memory_mlp import LAYER_NORM_EPS, gelu, gelu_derivative, layer_norm, layer_norm_backward


def gelu_second_derivative(h: Tensor) -> Tensor:
    """σ''(h) = φ(h) (2 − h²) for the exact GELU."""
    pdf = torch.exp(-0.5 * h * h) * (1.0 / (2.0 * torch.pi) ** 0.5)
    return pdf * (2.0 - h * h)


def layer_norm_second_order(z: Tensor, grad_out: Tensor, upstream: Tensor) -> Tensor:
    """∂/∂z ⟨u, J(z) g⟩ with g = ``grad_out``, u = ``upstream`` and J(z) g = :func:`layer_norm_backward`.

    With N = LN(z), r = 1/sqrt(var + ε), a = u·g − d ū ḡ (per row):
        −(r²/d) a N + (r²/d²)(g·N)(u·N) N − (r/d)(u·N) J g − (r/d)(g·N) J u.
    """
    d = z.shape[-1]
    mean = z.mean(dim=-1, keepdim=True)
    centred = z - mean
    inv_std = torch.rsqrt((centred * centred).mean(dim=-1, keepdim=True) + LAYER_NORM_EPS)
    normed = centred * inv_std
    gn = (grad_out * normed).sum(dim=-1, keepdim=True)
    un = (upstream * normed).sum(dim=-1, keepdim=True)
    a = (upstream * grad_out).sum(dim=-1, keepdim=True) - upstream.sum(-1, keepdim=True) * grad_out.mean(
        -1, keepdim=True
    )
    r_d = inv_std / d
    return (
        -r_d * inv_std * a * normed
        + r_d * inv_std / d * gn * un * normed
        - r_d * un * layer_norm_backward(z, grad_out)
        - r_d * gn * layer_norm_backward(z, upstream)
    )


class Mixing(NamedTuple):
    """What one aligned chunk needs of :class:`ChunkMixing`: D (…, n), c (…, n), Γ (…, n, n), π (…, n) and A_n (…)."""

    retain: Tensor
    carry: Tensor
    grad_mix: Tensor
    momentum_mix_last: Tensor
    momentum_decay_last: Tensor


@dataclass
class ChunkTape:
    """Intermediates of :func:`chunk_forward` that :func:`chunk_backward` reads (recomputed, never stored long)."""

    hidden: Tensor | None  # H = K W1 (depth 2)
    act: Tensor | None  # A = σ(H)
    z: Tensor | None  # Z = A W2
    err: Tensor  # ∂ℓ/∂M(K)
    deltas: list[Tensor]  # Δ_l
    query_inputs: list[Tensor]  # X_l
    query_pre: list[Tensor]  # H_l (query path pre-activations)
    query_w: list[Tensor]  # X_l W_l
    query_s: list[Tensor]  # X_l S_l
    query_m: list[Tensor | None]  # X_l M_0,l (None per layer without an anchor)


def _dual(
    x: Tensor, key_in: Tensor, delta: Tensor, w: Tensor, s: Tensor, mix: Mixing, m: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """H = D ⊙ (X W) + c ⊙ (X S) − ((X Aᵀ) ⊙ Γ) Δ [+ (1 − D) ⊙ (X M_0)]; returns (H, X W, X S, X M_0)."""
    xw, xs = x @ w, x @ s
    scores = (x @ key_in.transpose(-1, -2)) * mix.grad_mix
    h = mix.retain.unsqueeze(-1) * xw + mix.carry.unsqueeze(-1) * xs - scores @ delta
    xm = None if m is None else x @ m
    if xm is not None:
        h = h + (1 - mix.retain).unsqueeze(-1) * xm
    return h, xw, xs, xm


def chunk_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mix: Mixing,
    weights: list[Tensor],
    surprise: list[Tensor],
    anchor: list[Tensor] | None = None,
) -> tuple[Tensor, list[Tensor], list[Tensor], ChunkTape]:
    """One aligned chunk (depth 1 or 2): outputs (…, n, d), the state after it, and the tape. ``anchor``: M_0
    per layer (broadcast over the leading dimensions), which the forget gate decays towards (decision 9)."""
    depth = len(weights)
    if depth == 1:
        hidden = act = z = None
        err = k @ weights[0] - v
        deltas = [err]
        key_inputs = [k]
    else:
        hidden = k @ weights[0]
        act = gelu(hidden)
        z = act @ weights[1]
        err = k + layer_norm(z) - v
        delta2 = layer_norm_backward(z, err)
        delta1 = (delta2 @ weights[1].transpose(-1, -2)) * gelu_derivative(hidden)
        deltas = [delta1, delta2]
        key_inputs = [k, act]
    x = q
    query_inputs, query_pre, query_w, query_s = [], [], [], []
    query_m: list[Tensor | None] = []
    for layer in range(depth):
        m = None if anchor is None else anchor[layer]
        h, xw, xs, xm = _dual(x, key_inputs[layer], deltas[layer], weights[layer], surprise[layer], mix, m)
        query_inputs.append(x)
        query_pre.append(h)
        query_w.append(xw)
        query_s.append(xs)
        query_m.append(xm)
        x = gelu(h)
    y = query_pre[0] if depth == 1 else q + layer_norm(query_pre[-1])
    gamma = mix.grad_mix[..., -1, :].unsqueeze(-1)
    pi = mix.momentum_mix_last.unsqueeze(-1)
    d_n = mix.retain[..., -1, None, None]
    c_n = mix.carry[..., -1, None, None]
    a_n = mix.momentum_decay_last[..., None, None]
    new_weights, new_surprise = [], []
    for a, delta, w, s in zip(key_inputs, deltas, weights, surprise):
        a_t = a.transpose(-1, -2)
        new_weights.append(d_n * w + c_n * s - a_t @ (gamma * delta))
        new_surprise.append(a_n * s - a_t @ (pi * delta))
    if anchor is not None:  # W' gains (1 − D_n) M_0
        new_weights = [w + (1 - d_n) * m for w, m in zip(new_weights, anchor)]
    tape = ChunkTape(hidden, act, z, err, deltas, query_inputs, query_pre, query_w, query_s, query_m)
    return y, new_weights, new_surprise, tape


class ChunkGrads(NamedTuple):
    """Gradients of one chunk: inputs, mixing coefficients and the entering state."""

    q: Tensor
    k: Tensor
    v: Tensor
    mixing: Mixing
    weights: list[Tensor]
    surprise: list[Tensor]
    anchor: list[Tensor] | None  # per (…) program, like the state: sum over the batch for M_0's gradient


def _rowsum(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=-1)


def chunk_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mix: Mixing,
    weights: list[Tensor],
    surprise: list[Tensor],
    grad_y: Tensor,
    grad_new_weights: list[Tensor],
    grad_new_surprise: list[Tensor],
    anchor: list[Tensor] | None = None,
) -> ChunkGrads:
    """The vector-Jacobian product of :func:`chunk_forward`, by hand (recomputes the forward first)."""
    depth = len(weights)
    _, _, _, tape = chunk_forward(q, k, v, mix, weights, surprise, anchor)
    key_inputs = [k] if depth == 1 else [k, tape.act]
    gamma = mix.grad_mix[..., -1, :]
    pi = mix.momentum_mix_last
    d_n = mix.retain[..., -1, None, None]
    c_n = mix.carry[..., -1, None, None]
    a_n = mix.momentum_decay_last[..., None, None]

    grad_q = torch.zeros_like(q)
    grad_key_inputs = [torch.zeros_like(a) for a in key_inputs]  # type: ignore[arg-type]
    grad_deltas = [torch.zeros_like(d) for d in tape.deltas]
    grad_w, grad_s = [], []
    grad_retain = torch.zeros_like(mix.retain)
    grad_carry = torch.zeros_like(mix.carry)
    grad_mix = torch.zeros_like(mix.grad_mix)
    grad_gamma = torch.zeros_like(gamma)
    grad_pi = torch.zeros_like(pi)
    grad_d_n = grad_c_n = grad_a_n = torch.zeros_like(mix.momentum_decay_last)
    # M_0: (1 − D_n) M_0 in W' and (1 − D) ⊙ (X M_0) in H, per program (shaped like the state).
    grad_anchor = None if anchor is None else [(1 - d_n) * gw for gw in grad_new_weights]

    # State updates: W' = D_n W + c_n S − Aᵀ(γ⊙Δ), S' = A_n S − Aᵀ(π⊙Δ).
    for layer in range(depth):
        gw, gs = grad_new_weights[layer], grad_new_surprise[layer]
        w, s, a, delta = weights[layer], surprise[layer], key_inputs[layer], tape.deltas[layer]
        assert a is not None
        grad_w.append(d_n * gw)
        grad_s.append(c_n * gw + a_n * gs)
        grad_d_n = grad_d_n + (gw * (w if anchor is None else w - anchor[layer])).sum(dim=(-1, -2))
        grad_c_n = grad_c_n + (gw * s).sum(dim=(-1, -2))
        grad_a_n = grad_a_n + (gs * s).sum(dim=(-1, -2))
        a_gw, a_gs = a @ gw, a @ gs  # (…, n, d_out)
        grad_key_inputs[layer] -= (gamma.unsqueeze(-1) * delta) @ gw.transpose(-1, -2)
        grad_key_inputs[layer] -= (pi.unsqueeze(-1) * delta) @ gs.transpose(-1, -2)
        grad_deltas[layer] -= gamma.unsqueeze(-1) * a_gw + pi.unsqueeze(-1) * a_gs
        grad_gamma -= _rowsum(delta, a_gw)
        grad_pi -= _rowsum(delta, a_gs)

    # Query path, last layer first: H_l = D⊙(X W) + c⊙(X S) − ((X Aᵀ)⊙Γ) Δ.
    if depth == 1:
        grad_h = grad_y
    else:
        grad_q = grad_q + grad_y
        grad_h = layer_norm_backward(tape.query_pre[-1], grad_y)
    for layer in range(depth - 1, -1, -1):
        x, a, delta = tape.query_inputs[layer], key_inputs[layer], tape.deltas[layer]
        assert a is not None
        w, s = weights[layer], surprise[layer]
        grad_retain += _rowsum(grad_h, tape.query_w[layer])
        grad_carry += _rowsum(grad_h, tape.query_s[layer])
        scores = x @ a.transpose(-1, -2)
        grad_scores = -(grad_h @ delta.transpose(-1, -2))  # ∂/∂((X Aᵀ)⊙Γ)
        grad_mix += grad_scores * scores
        masked = grad_scores * mix.grad_mix
        grad_deltas[layer] -= (scores * mix.grad_mix).transpose(-1, -2) @ grad_h
        grad_key_inputs[layer] += masked.transpose(-1, -2) @ x
        retain_h = mix.retain.unsqueeze(-1) * grad_h
        carry_h = mix.carry.unsqueeze(-1) * grad_h
        grad_w[layer] += x.transpose(-1, -2) @ retain_h
        grad_s[layer] += x.transpose(-1, -2) @ carry_h
        grad_x = retain_h @ w.transpose(-1, -2) + carry_h @ s.transpose(-1, -2) + masked @ a
        query_m = tape.query_m[layer]
        if anchor is not None and grad_anchor is not None and query_m is not None:
            rest_h = grad_h - retain_h  # (1 − D) ⊙ ∂H
            grad_retain -= _rowsum(grad_h, query_m)
            grad_anchor[layer] = grad_anchor[layer] + x.transpose(-1, -2) @ rest_h
            grad_x = grad_x + rest_h @ anchor[layer].transpose(-1, -2)
        if layer == 0:
            grad_q = grad_q + grad_x
        else:
            grad_h = grad_x * gelu_derivative(tape.query_pre[layer - 1])

    # Key path.
    if depth == 1:
        grad_err = grad_deltas[0]
        grad_k = grad_key_inputs[0] + grad_err @ weights[0].transpose(-1, -2)
        grad_w[0] += k.transpose(-1, -2) @ grad_err
    else:
        assert tape.hidden is not None and tape.act is not None and tape.z is not None
        w2 = weights[1]
        gelu_d = gelu_derivative(tape.hidden)
        back = tape.deltas[1] @ w2.transpose(-1, -2)  # Δ2 W2ᵀ
        grad_back = grad_deltas[0] * gelu_d
        grad_hidden = grad_deltas[0] * back * gelu_second_derivative(tape.hidden)
        grad_delta2 = grad_deltas[1] + grad_back @ w2
        grad_w[1] += grad_back.transpose(-1, -2) @ tape.deltas[1]
        grad_err = layer_norm_backward(tape.z, grad_delta2)  # J symmetric
        grad_z = layer_norm_backward(tape.z, grad_err) + layer_norm_second_order(tape.z, tape.err, grad_delta2)
        grad_act = grad_key_inputs[1] + grad_z @ w2.transpose(-1, -2)
        grad_w[1] += tape.act.transpose(-1, -2) @ grad_z
        grad_hidden = grad_hidden + grad_act * gelu_d
        grad_k = grad_key_inputs[0] + grad_err + grad_hidden @ weights[0].transpose(-1, -2)
        grad_w[0] += k.transpose(-1, -2) @ grad_hidden
    grad_v = -grad_err

    grad_mix[..., -1, :] += grad_gamma
    grad_retain[..., -1] += grad_d_n
    grad_carry[..., -1] += grad_c_n
    mixing_grads = Mixing(grad_retain, grad_carry, grad_mix, grad_pi, grad_a_n)
    return ChunkGrads(grad_q, grad_k, grad_v, mixing_grads, grad_w, grad_s, grad_anchor)
