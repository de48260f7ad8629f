"""The memory recurrence (eqs. 8, 10/14, 13, 15, 16–18) — two implementations of one function.

Inputs for a batch of memories (``B`` sequences × ``H`` heads), all in the inner dtype (fp32 or fp64):

* ``queries, keys, values``: (B, H, T, d) — q_t, k_t, v_t after projection, conv, SiLU and ℓ2-norm;
* ``lr``: (B, H, T) — θ_t, the inner learning rate;
* ``log_momentum``: (B, H, T) — log η_t, or ``None`` for no momentum (η = 0, S_t = −θ_t u_t);
* ``log_retain``: (B, H, T) — log(1 − α_t), or ``None`` for no weight decay (α = 0);
* ``anchor``: what the forget gate decays the weights towards — ``None`` for 0 (eq. 13 as written), or the
  weights M_0 (one tensor per layer, broadcastable to the state's (B, H, d_in, d_out)): decision 9.

Per token t in a chunk that starts after token t' (t' = t − (t mod b), chunk size b, eq. 16):

    u_t = ∇ℓ(M_{t'}; k_t, v_t)                     gradient at the chunk-start weights (eqs. 12, 16)
    S_t = η_t S_{t−1} − θ_t u_t                     surprise with momentum (eqs. 10/14)
    M_t = (1 − α_t) M_{t−1} + S_t                   forgetting (eq. 13); with an anchor M_0:
    M_t = (1 − α_t) M_{t−1} + α_t M_0 + S_t          forgetting towards M_0 (decision 9)
    y_t = M_t(q_t)                                  retrieval with the weights after token t (eq. 15, decision 4)

:func:`memory_recurrence_reference` runs this literally, token by token, with the inner gradient from
``torch.autograd``. :func:`memory_recurrence_chunked` computes the same function chunk-parallel: one batched
analytic gradient per chunk, the b×b mixing matrix in log space (:func:`chunk_mixing`) and dual-form retrieval.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.utils.checkpoint
from torch import Tensor

from titans.ops.memory_mlp import gelu, inner_grad_factors, inner_loss, memory_forward, memory_output


@dataclass(frozen=True)
class RecurrentState:
    """State of the memory recurrence after some prefix of the sequence.

    ``weights`` are M_t, ``momentum`` S_t (``None`` without momentum), ``chunk_start`` the weights M_{t'}
    at which the gradients of the current chunk are taken, and ``offset`` = t mod b, the number of tokens
    already consumed in the current chunk (when it is 0, ``chunk_start`` equals ``weights``).
    Each weight tensor has shape (B, H, d_in, d_out).
    """

    weights: tuple[Tensor, ...]
    momentum: tuple[Tensor, ...] | None
    chunk_start: tuple[Tensor, ...]
    offset: int

    @staticmethod
    def initial(initial_weights: Sequence[Tensor], batch: int, momentum: bool) -> RecurrentState:
        """The state before the first token: M_0 (learned, shared over the batch) and S_0 = 0."""
        weights = tuple(w.unsqueeze(0).expand(batch, *w.shape) for w in initial_weights)
        surprise = tuple(torch.zeros_like(w) for w in weights) if momentum else None
        return RecurrentState(weights, surprise, weights, 0)

    def detach(self) -> RecurrentState:
        """The same state cut from the autograd graph (for truncated backpropagation through time)."""
        return self.map(Tensor.detach)

    def map(self, fn: Callable[[Tensor], Tensor]) -> RecurrentState:
        """Apply ``fn`` to every tensor (e.g. ``lambda t: t.to(device)``, or batch-row selection)."""
        return RecurrentState(
            tuple(fn(w) for w in self.weights),
            None if self.momentum is None else tuple(fn(s) for s in self.momentum),
            tuple(fn(w) for w in self.chunk_start),
            self.offset,
        )


def _state(
    weights: Sequence[Tensor], surprise: Sequence[Tensor] | None, chunk_start: Sequence[Tensor], offset: int
) -> RecurrentState:
    """A state, with ``chunk_start`` = ``weights`` at a chunk boundary (so equal states compare equal)."""
    start = tuple(weights) if offset == 0 else tuple(chunk_start)
    return RecurrentState(tuple(weights), None if surprise is None else tuple(surprise), start, offset)


# --------------------------------------------------------------------------------------------------
# The reference: token by token, literally.
# --------------------------------------------------------------------------------------------------


def autograd_inner_grad(weights: Sequence[Tensor], key: Tensor, value: Tensor) -> tuple[Tensor, ...]:
    """∇_W ½‖M_W(k) − v‖² by ``torch.autograd`` for one token per memory: key/value (B, H, d)."""
    build_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        leaves = [w if w.requires_grad else w.detach().requires_grad_(True) for w in weights]
        loss = inner_loss(leaves, key.unsqueeze(-2), value.unsqueeze(-2)).sum()
        grads = torch.autograd.grad(loss, leaves, create_graph=build_graph)
    return tuple(grads)


def memory_recurrence_reference(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    lr: Tensor,
    log_momentum: Tensor | None,
    log_retain: Tensor | None,
    state: RecurrentState,
    chunk_size: int,
    anchor: Sequence[Tensor] | None = None,
) -> tuple[Tensor, RecurrentState]:
    """The recurrence token by token (eqs. 8, 10/14, 13, 15, 16), inner gradients by autograd."""
    weights = list(state.weights)
    surprise = None if state.momentum is None else list(state.momentum)
    chunk_start = list(state.chunk_start)
    offset = state.offset
    outputs = []
    for t in range(queries.shape[2]):
        if offset == 0:
            chunk_start = list(weights)  # t' = t: a new chunk takes its gradients here (eq. 16)
        grads = autograd_inner_grad(chunk_start, keys[:, :, t], values[:, :, t])
        theta = lr[:, :, t, None, None]
        for layer, u in enumerate(grads):
            if surprise is not None:
                assert log_momentum is not None
                eta = log_momentum[:, :, t, None, None].exp()
                surprise[layer] = eta * surprise[layer] - theta * u  # eq. 14
                step = surprise[layer]
            else:
                step = -theta * u  # eq. 8 (η = 0)
            if log_retain is None:
                weights[layer] = weights[layer] + step
            elif anchor is None:
                weights[layer] = log_retain[:, :, t, None, None].exp() * weights[layer] + step  # eq. 13
            else:  # towards M_0 (decision 9)
                retain = log_retain[:, :, t, None, None].exp()
                weights[layer] = retain * weights[layer] + (1 - retain) * anchor[layer] + step
        outputs.append(memory_forward(weights, queries[:, :, t].unsqueeze(-2)).squeeze(-2))  # eq. 15
        offset = (offset + 1) % chunk_size
    if not outputs:
        return queries.new_zeros(queries.shape), state
    return torch.stack(outputs, dim=2), _state(weights, surprise, chunk_start, offset)


# --------------------------------------------------------------------------------------------------
# The chunk-parallel closed form.
# --------------------------------------------------------------------------------------------------


class ChunkMixing(NamedTuple):
    """Coefficients of one chunk's closed form (TITANS.md section 1), local positions 1..n.

    ``retain``  (…, n):    D_{1:t}, the decay of the entering weights;
    ``carry``   (…, n):    c_t = Σ_{i≤t} D_{i+1:t} A_{1:i}, the weight on the entering momentum S;
    ``grad_mix`` (…, n, n): W_{t,r} θ_r (lower triangular, r ≤ t): weight of u_r in M_t;
    ``momentum_decay`` (…, n): A_{1:t}; ``momentum_mix`` (…, n, n): A_{r+1:t} θ_r: weight of u_r in S_t.
    """

    retain: Tensor
    carry: Tensor | None
    grad_mix: Tensor
    momentum_decay: Tensor | None
    momentum_mix: Tensor | None

    def select(self, index: int) -> ChunkMixing:
        """The coefficients of chunk ``index`` from a batch of chunks laid out on dimension 2."""

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[:, :, index]

        return ChunkMixing(
            self.retain[:, :, index],
            pick(self.carry),
            self.grad_mix[:, :, index],
            pick(self.momentum_decay),
            pick(self.momentum_mix),
        )


def _segment_products(log_factors: Tensor) -> Tensor:
    """P[t, i] = Π_{j=i+1..t} f_j for i ≤ t and 0 above the diagonal, from cumulative logs (all ≤ 1)."""
    cum = log_factors.cumsum(dim=-1)
    n = log_factors.shape[-1]
    lower = torch.ones(n, n, dtype=torch.bool, device=log_factors.device).tril()
    diff = (cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(~lower, float("-inf"))
    return diff.exp()


def chunk_mixing(lr: Tensor, log_momentum: Tensor | None, log_retain: Tensor | None) -> ChunkMixing:
    """The closed-form coefficients of one chunk from its gates (…, n), in log space (eqs. 17–18).

    With A_{a:c} = Π η and D_{a:c} = Π (1 − α): W_{t,r} = Σ_{i=r..t} D_{i+1:t} A_{r+1:i} = (P_D P_A)[t, r],
    a product of two lower-triangular matrices whose entries are all ≤ 1, so nothing overflows.
    """
    if log_retain is None:
        log_retain = torch.zeros_like(lr)
    decay_products = _segment_products(log_retain)  # P_D[t, i] = D_{i+1:t}
    retain = log_retain.cumsum(dim=-1).exp()  # D_{1:t}
    if log_momentum is None:  # η = 0: S_t = −θ_t u_t, so W_{t,r} = D_{r+1:t}
        return ChunkMixing(retain, None, decay_products * lr.unsqueeze(-2), None, None)
    momentum_products = _segment_products(log_momentum)  # P_A[i, r] = A_{r+1:i}
    momentum_decay = log_momentum.cumsum(dim=-1).exp()  # A_{1:i}
    carry = (decay_products @ momentum_decay.unsqueeze(-1)).squeeze(-1)
    grad_mix = (decay_products @ momentum_products) * lr.unsqueeze(-2)
    return ChunkMixing(retain, carry, grad_mix, momentum_decay, momentum_products * lr.unsqueeze(-2))


def _chunk_span(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    mixing: ChunkMixing,
    weights: Sequence[Tensor],
    surprise: Sequence[Tensor] | None,
    grad_weights: Sequence[Tensor],
    anchor: Sequence[Tensor] | None = None,
) -> tuple[Tensor, list[Tensor], list[Tensor] | None]:
    """One span of n tokens inside a chunk: outputs for every token and the state after the last.

    The span enters with weights M and momentum S; its gradients are taken at ``grad_weights`` (the
    chunk-start weights M_{t'}). For layer l, M_t = D_{1:t} M + c_t S − Σ_{r≤t} W_{t,r} θ_r a_rᵀ δ_r, so
    the pre-activation of a query input x_t is (the dual form)
        x_t M_t = D_{1:t} (x_t M) + c_t (x_t S) − Σ_r [W_{t,r} θ_r (x_t · a_r)] δ_r,
    plus (1 − D_{1:t}) (x_t M_0) when the forget gate decays towards an anchor M_0 (decision 9).
    """
    inputs, deltas = inner_grad_factors(grad_weights, keys, values)  # one batched gradient (eq. 16)
    depth = len(weights)
    x = queries
    h = queries
    for layer in range(depth):
        h = mixing.retain.unsqueeze(-1) * (x @ weights[layer])
        if anchor is not None:
            h = h + (1 - mixing.retain).unsqueeze(-1) * (x @ anchor[layer])
        if surprise is not None:
            assert mixing.carry is not None
            h = h + mixing.carry.unsqueeze(-1) * (x @ surprise[layer])
        scores = (x @ inputs[layer].transpose(-1, -2)) * mixing.grad_mix
        h = h - scores @ deltas[layer]
        if layer < depth - 1:
            x = gelu(h)
    outputs = memory_output(queries, h, depth)

    last = -1
    new_weights = []
    for layer in range(depth):
        update = inputs[layer].transpose(-1, -2) @ (mixing.grad_mix[..., last, :].unsqueeze(-1) * deltas[layer])
        retain = mixing.retain[..., last, None, None]
        w = retain * weights[layer] - update
        if anchor is not None:
            w = w + (1 - retain) * anchor[layer]
        if surprise is not None:
            assert mixing.carry is not None
            w = w + mixing.carry[..., last, None, None] * surprise[layer]
        new_weights.append(w)
    new_surprise = None
    if surprise is not None:
        assert mixing.momentum_decay is not None and mixing.momentum_mix is not None
        new_surprise = [
            mixing.momentum_decay[..., last, None, None] * s
            - a.transpose(-1, -2) @ (mixing.momentum_mix[..., last, :].unsqueeze(-1) * d)
            for s, a, d in zip(surprise, inputs, deltas)
        ]
    return outputs, new_weights, new_surprise


def chunk_spans(length: int, offset: int, chunk_size: int) -> list[tuple[int, int]]:
    """Split [0, length) into spans that never cross a chunk boundary, given ``offset`` tokens already
    consumed in the current chunk."""
    spans = []
    start = 0
    room = chunk_size - offset
    while start < length:
        end = min(start + room, length)
        spans.append((start, end))
        start = end
        room = chunk_size
    return spans


@functools.cache
def compiled_chunk_span() -> Callable[..., tuple[Tensor, list[Tensor], list[Tensor] | None]]:
    """:func:`_chunk_span` through ``torch.compile`` (compiled once per process and input shape)."""
    return torch.compile(_chunk_span, dynamic=False)


def span_mixings(
    lr: Tensor,
    log_momentum: Tensor | None,
    log_retain: Tensor | None,
    spans: Sequence[tuple[int, int]],
    chunk_size: int,
) -> list[ChunkMixing]:
    """The mixing coefficients of every span; all full chunks are computed in one batched call."""

    def gates(lo: int, hi: int, n_chunks: int) -> list[Tensor | None]:
        return [
            None if g is None else g[:, :, lo:hi].unflatten(-1, (n_chunks, -1)) for g in (lr, log_momentum, log_retain)
        ]

    full = [i for i, (lo, hi) in enumerate(spans) if hi - lo == chunk_size]
    batched = None
    if full:
        lo, hi = spans[full[0]][0], spans[full[-1]][1]
        batched = chunk_mixing(*gates(lo, hi, len(full)))  # type: ignore[arg-type]
    out = []
    for i, (lo, hi) in enumerate(spans):
        if batched is not None and full[0] <= i <= full[-1]:
            out.append(batched.select(i - full[0]))
        else:
            out.append(chunk_mixing(*gates(lo, hi, 1)).select(0))  # type: ignore[arg-type]
    return out


def _run_spans(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    lr: Tensor,
    log_momentum: Tensor | None,
    log_retain: Tensor | None,
    state: RecurrentState,
    chunk_size: int,
    chunk_span: Callable[..., tuple[Tensor, list[Tensor], list[Tensor] | None]],
    anchor: Sequence[Tensor] | None = None,
) -> tuple[Tensor, RecurrentState]:
    """The chunk loop over a stretch of tokens that starts at ``state``."""
    weights = list(state.weights)
    surprise = None if state.momentum is None else list(state.momentum)
    chunk_start = list(state.chunk_start)
    offset = state.offset
    outputs = []
    spans = chunk_spans(queries.shape[2], offset, chunk_size)
    for (start, end), mixing in zip(spans, span_mixings(lr, log_momentum, log_retain, spans, chunk_size)):
        if offset == 0:
            chunk_start = list(weights)
        piece = slice(start, end)
        out, weights, surprise = chunk_span(
            queries[:, :, piece], keys[:, :, piece], values[:, :, piece], mixing, weights, surprise, chunk_start, anchor
        )
        outputs.append(out)
        offset = (offset + end - start) % chunk_size
    return torch.cat(outputs, dim=2), _state(weights, surprise, chunk_start, offset)


def memory_recurrence_chunked(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    lr: Tensor,
    log_momentum: Tensor | None,
    log_retain: Tensor | None,
    state: RecurrentState,
    chunk_size: int,
    compile_step: bool = False,
    checkpoint_chunks: int = 0,
    anchor: Sequence[Tensor] | None = None,
) -> tuple[Tensor, RecurrentState]:
    """The same function as :func:`memory_recurrence_reference`, chunk-parallel (loop over chunks only).

    ``compile_step=True`` runs each chunk through ``torch.compile`` (fused elementwise work; same math).
    ``checkpoint_chunks=G > 0`` keeps for backward only the state every G chunks and recomputes the chunks
    in between (activation checkpointing): memory then grows with T/G states instead of one per chunk.
    """
    length = queries.shape[2]
    if length == 0:
        return queries.new_zeros(queries.shape), state
    chunk_span = compiled_chunk_span() if compile_step else _chunk_span
    if checkpoint_chunks <= 0 or not torch.is_grad_enabled():
        return _run_spans(queries, keys, values, lr, log_momentum, log_retain, state, chunk_size, chunk_span, anchor)
    spans = chunk_spans(length, state.offset, chunk_size)
    outputs = []
    for group in range(0, len(spans), checkpoint_chunks):
        piece = slice(spans[group][0], spans[min(group + checkpoint_chunks, len(spans)) - 1][1])
        gates = [None if g is None else g[:, :, piece] for g in (lr, log_momentum, log_retain)]
        out, state = torch.utils.checkpoint.checkpoint(
            _run_spans,
            queries[:, :, piece],
            keys[:, :, piece],
            values[:, :, piece],
            *gates,
            state,
            chunk_size,
            chunk_span,
            anchor,
            use_reentrant=False,
        )
        outputs.append(out)
    return torch.cat(outputs, dim=2), state


RECURRENCES: dict[str, Callable[..., tuple[Tensor, RecurrentState]]] = {
    "reference": memory_recurrence_reference,
    "chunked": memory_recurrence_chunked,
}
