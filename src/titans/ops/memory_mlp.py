"""The memory model M and its inner loss (TITANS.md section 1, decision 3).

Every function works on a batch of memories at once: a weight tensor has shape
``(..., d_in, d_out)`` (``...`` = batch, heads) and inputs have shape ``(..., n, d_in)``.

* depth 1 — a linear memory ``M(x) = x W`` (with η = 0 this is Gated DeltaNet, App. C).
* depth L ≥ 2 — a residual MLP ``M(x) = x + LN(σ(σ(x W_1) W_2 …) W_L)``, σ = GELU, LN without affine
  parameters (NeurIPS version of the paper: "x + LN(W_1 σ(W_2 x))", expansion 4).

Inner loss (eq. 12 with the ½ of decision 3): ``ℓ(M; k, v) = ½ ‖M(k) − v‖²`` summed over features.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

LAYER_NORM_EPS = 1e-5


def gelu(h: Tensor) -> Tensor:
    """σ: exact (erf) GELU, as ``torch.nn.functional.gelu``."""
    return F.gelu(h)


def gelu_derivative(h: Tensor) -> Tensor:
    """σ'(h) = Φ(h) + h φ(h)."""
    cdf = 0.5 * (1.0 + torch.erf(h * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * h * h) * (1.0 / math.sqrt(2.0 * math.pi))
    return cdf + h * pdf


def layer_norm(z: Tensor) -> Tensor:
    """LN without affine parameters over the last dimension (population variance)."""
    mean = z.mean(dim=-1, keepdim=True)
    centred = z - mean
    var = (centred * centred).mean(dim=-1, keepdim=True)
    return centred * torch.rsqrt(var + LAYER_NORM_EPS)


def layer_norm_backward(z: Tensor, grad_out: Tensor) -> Tensor:
    """∂/∂z of ⟨grad_out, LN(z)⟩, analytically: (g − mean(g) − n·mean(g⊙n)) / sqrt(var + ε)."""
    mean = z.mean(dim=-1, keepdim=True)
    centred = z - mean
    inv_std = torch.rsqrt((centred * centred).mean(dim=-1, keepdim=True) + LAYER_NORM_EPS)
    normed = centred * inv_std
    g_mean = grad_out.mean(dim=-1, keepdim=True)
    gn_mean = (grad_out * normed).mean(dim=-1, keepdim=True)
    return (grad_out - g_mean - normed * gn_mean) * inv_std


def memory_output(x: Tensor, last_preactivation: Tensor, depth: int) -> Tensor:
    """The memory's output from its input and the last layer's pre-activation."""
    if depth == 1:
        return last_preactivation
    return x + layer_norm(last_preactivation)


def memory_forward(weights: Sequence[Tensor], x: Tensor) -> Tensor:
    """M(x) for a batch of memories: weights[l] is (..., d_l, d_{l+1}), x is (..., n, d_0)."""
    a = x
    h = x
    for layer, w in enumerate(weights):
        h = a @ w
        if layer < len(weights) - 1:
            a = gelu(h)
    return memory_output(x, h, len(weights))


def inner_loss(weights: Sequence[Tensor], keys: Tensor, values: Tensor) -> Tensor:
    """Eq. 12 with decision 3: ½‖M(k) − v‖², summed over features; shape (..., n) — one loss per token."""
    err = memory_forward(weights, keys) - values
    return 0.5 * (err * err).sum(dim=-1)


def inner_grad_factors(weights: Sequence[Tensor], keys: Tensor, values: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """The per-token inner gradient of eq. 12 in factored form, analytically (no autograd).

    For token r and layer l, ∇_{W_l} ℓ(M; k_r, v_r) = a_{r,l}ᵀ δ_{r,l} (an outer product), where a_{r,l}
    is layer l's input and δ_{r,l} = ∂ℓ/∂(a_{r,l} W_l). Returns (inputs, deltas): lists over layers of
    tensors of shape (..., n, d_l) and (..., n, d_{l+1}).
    """
    depth = len(weights)
    inputs: list[Tensor] = []
    preacts: list[Tensor] = []
    a = keys
    for layer, w in enumerate(weights):
        inputs.append(a)
        h = a @ w
        preacts.append(h)
        if layer < depth - 1:
            a = gelu(h)
    err = memory_output(keys, preacts[-1], depth) - values  # ∂ℓ/∂M(k)
    delta = err if depth == 1 else layer_norm_backward(preacts[-1], err)
    deltas = [delta]
    for layer in range(depth - 1, 0, -1):
        delta = (delta @ weights[layer].transpose(-1, -2)) * gelu_derivative(preacts[layer - 1])
        deltas.append(delta)
    deltas.reverse()
    return inputs, deltas


def per_token_inner_grads(weights: Sequence[Tensor], keys: Tensor, values: Tensor) -> list[Tensor]:
    """u_r = ∇ℓ(M; k_r, v_r) materialised per token: list over layers of (..., n, d_l, d_{l+1})."""
    inputs, deltas = inner_grad_factors(weights, keys, values)
    return [a.unsqueeze(-1) * d.unsqueeze(-2) for a, d in zip(inputs, deltas)]


def memory_layer_shapes(head_dim: int, depth: int, expansion: int) -> list[tuple[int, int]]:
    """(d_in, d_out) of each memory layer: d → e·d → … → e·d → d (depth 1: d → d)."""
    if depth < 1:
        raise ValueError(f"memory depth must be >= 1, got {depth}")
    if depth == 1:
        return [(head_dim, head_dim)]
    hidden = head_dim * expansion
    dims = [head_dim] + [hidden] * (depth - 1) + [head_dim]
    return list(itertools.pairwise(dims))
