"""Triton kernels of the memory recurrence, depth-2 memory (x + LN(σ(x W1) W2)), whole chunks.

One program per (batch, head) walks its chunks in order — or ``SPLIT`` programs, each owning E / SPLIT hidden
columns and exchanging the sums over E that feed a LayerNorm (:func:`_exchange`); the fp32 weights and
momentum live in a scratch copy of the state (L2-resident at the benchmark shape) and the hidden dimension E is
streamed in blocks of ``BLOCK_E``. Every line mirrors :mod:`titans.ops.chunk_vjp` (same names: Δ1 = ``delta1``
…), which is tested against ``torch.autograd``; these kernels are tested against it in turn
(``tests/test_fused.py``).

* :func:`memory_forward_kernel`: chunks c_begin … c_end − 1 in order: outputs (optional) and the state,
  writing the state at the start of every ``ckpt_every``-th chunk to a checkpoint buffer.
* :func:`memory_backward_kernel`: a stretch of chunks in reverse, given the state at the start of each chunk,
  carrying the gradients of the state (dW1, dW2, dS1, dS2) from chunk to chunk.

This module imports Triton; :mod:`titans.ops.fused` imports it only when the Triton backend is used.
"""

from __future__ import annotations

import triton
import triton.language as tl

LN_EPS = tl.constexpr(1e-5)  # titans.ops.memory_mlp.LAYER_NORM_EPS
INV_SQRT2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _gelu(h):
    return 0.5 * h * (1.0 + tl.math.erf(h * INV_SQRT2))


@triton.jit
def _gelu_d(h):
    """σ'(h) = Φ(h) + h φ(h)."""
    return 0.5 * (1.0 + tl.math.erf(h * INV_SQRT2)) + h * tl.exp(-0.5 * h * h) * INV_SQRT_2PI


@triton.jit
def _gelu_dd(h):
    """σ''(h) = φ(h)(2 − h²)."""
    return tl.exp(-0.5 * h * h) * INV_SQRT_2PI * (2.0 - h * h)


@triton.jit
def _ln(z, D: tl.constexpr):
    """Rows of z → (LN(z), 1/std), population variance, no affine."""
    mean = tl.sum(z, axis=1) / D
    centred = z - mean[:, None]
    inv_std = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / D + LN_EPS)
    return centred * inv_std[:, None], inv_std


@triton.jit
def _ln_back(normed, inv_std, g, D: tl.constexpr):
    """J(z) g = (g − mean(g) − N mean(g ⊙ N)) / std (titans.ops.memory_mlp.layer_norm_backward)."""
    g_mean = tl.sum(g, axis=1) / D
    gn_mean = tl.sum(g * normed, axis=1) / D
    return (g - g_mean[:, None] - normed * gn_mean[:, None]) * inv_std[:, None]


@triton.jit
def _chunk_offsets(chunk, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """Row and feature offsets of a chunk tile and its masks: rows (n), rows × features, rows × rows."""
    offs_n = tl.arange(0, BLOCK_N)
    valid = offs_n < chunk
    return offs_n, tl.arange(0, D), valid, valid[:, None], valid[:, None] & valid[None, :]


@triton.jit
def _load_tile(ptr, rows, cols, row_stride, mask):
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _chunk_mixing(retain_ptr, carry_ptr, mix_ptr, pi_ptr, a_last_ptr, bh, c, chunk, n_chunks, offs_n, valid):
    """Chunk c's mixing coefficients: D, c, γ = Γ[n−1], π (rows of n), and the scalars D_n, c_n, A_n."""
    gate = bh * n_chunks * chunk + c * chunk
    retain = tl.load(retain_ptr + gate + offs_n, mask=valid, other=0.0)
    carry = tl.load(carry_ptr + gate + offs_n, mask=valid, other=0.0)
    gamma = tl.load(mix_ptr + (gate + chunk - 1) * chunk + offs_n, mask=valid, other=0.0)
    pi = tl.load(pi_ptr + gate + offs_n, mask=valid, other=0.0)
    d_n = tl.load(retain_ptr + gate + chunk - 1)
    c_n = tl.load(carry_ptr + gate + chunk - 1)
    a_n = tl.load(a_last_ptr + bh * n_chunks + c)
    return gate, retain, carry, gamma, pi, d_n, c_n, a_n


@triton.jit
def _load_backward_chunk(
    q_ptr, k_ptr, v_ptr, dy_ptr, mix_ptr, seq, gate, chunk, offs_n, offs_d, tile_mask, pair_mask, D: tl.constexpr
):
    """A chunk's Q, K, V, dY tiles (rows × D) and its mixing matrix Γ (rows × rows)."""
    q = _load_tile(q_ptr + seq, offs_n, offs_d, D, tile_mask)
    k = _load_tile(k_ptr + seq, offs_n, offs_d, D, tile_mask)
    v = _load_tile(v_ptr + seq, offs_n, offs_d, D, tile_mask)
    dy = _load_tile(dy_ptr + seq, offs_n, offs_d, D, tile_mask)
    return q, k, v, dy, _load_tile(mix_ptr + gate * chunk, offs_n, offs_n, chunk, pair_mask)


@triton.jit
def _key_path_partial(
    k, w1_ptr, w2_ptr, offs_d, offs_e, e_lo,
    D: tl.constexpr, E: tl.constexpr, E_PART: tl.constexpr, BLOCK_E: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """This program's share of Z = σ(K W1) W2: the sum over its E_PART hidden columns from e_lo."""
    z = tl.zeros(k.shape, dtype=tl.float32)
    for e0 in range(e_lo, e_lo + E_PART, BLOCK_E):
        w1 = tl.load(w1_ptr + e0 + offs_d[:, None] * E + offs_e[None, :])
        w2 = tl.load(w2_ptr + e0 * D + offs_e[:, None] * D + offs_d[None, :])
        act = _gelu(tl.dot(k, w1, input_precision=PREC))
        z += tl.dot(act, w2, input_precision=PREC)
    return z


@triton.jit
def _key_path_finish(z, k, v, D: tl.constexpr):
    """N = LN(Z), Err = K + N − V, Δ2 = J Err (chunk_vjp.chunk_forward's key path), from the whole sum Z."""
    normed, inv_std = _ln(z, D)
    err = k + normed - v
    delta2 = _ln_back(normed, inv_std, err, D)
    return normed, inv_std, err, delta2


@triton.jit
def _exchange(tile, offs, sync_ptr, xch_ptr, bh, part, arrival, SPLIT: tl.constexpr, SLOT: tl.constexpr):
    """The sum of ``tile`` over the SPLIT programs that share (batch, head) ``bh``, the same in each of them.

    Each program stores its tile in its slot of the group's exchange buffer (two alternating sets of slots:
    a program can only refill a set after every program of the group has passed the next exchange, so after
    it has read this one), counts itself in the group's arrival counter, waits until the whole group has
    arrived for the ``arrival``-th time in this launch, and sums the slots in a fixed order."""
    if SPLIT > 1:
        base = xch_ptr + (bh * 2 + arrival % 2) * SPLIT * SLOT
        tl.store(base + part * SLOT + offs, tile)
        tl.debug_barrier()  # every thread's store before the release below
        counter = sync_ptr + 1 + bh
        tl.atomic_add(counter, 1, sem="release")
        seen = tl.atomic_add(counter, 0, sem="acquire")
        while seen < (arrival + 1) * SPLIT:
            seen = tl.atomic_add(counter, 0, sem="acquire")
        tl.debug_barrier()
        tile = tl.load(base + offs, cache_modifier=".cg")  # from L2: the other programs wrote it
        for member in tl.static_range(1, SPLIT):
            tile += tl.load(base + member * SLOT + offs, cache_modifier=".cg")
    return tile


@triton.jit
def _group(sync_ptr, SPLIT: tl.constexpr):
    """(batch·head, part) of this program: one program per (batch, head) (SPLIT = 1), or SPLIT programs sharing
    one (batch, head), each owning E / SPLIT hidden columns. Split programs take their place from a ticket
    counter in the order they start, so a group's first members never wait for members that cannot start:
    every group but the last one handed out has all its tickets in running or finished programs."""
    if SPLIT > 1:
        ticket = tl.atomic_add(sync_ptr, 1)
        bh = ticket // SPLIT
        part = ticket % SPLIT
    else:
        bh = tl.program_id(0)
        part = 0
    return bh, part


@triton.jit
def _put(ptr, value, mask, ATOMIC: tl.constexpr):
    """Store, or add (split programs each hold a part of a sum over the hidden columns)."""
    if ATOMIC:
        tl.atomic_add(ptr, value, mask=mask)
    else:
        tl.store(ptr, value, mask=mask)


@triton.jit
def _store_chunk_grads(
    dq_ptr, dk_ptr, dv_ptr, d_retain_ptr, d_carry_ptr, d_mix_ptr, d_pi_ptr, d_a_last_ptr,
    seq, gate, bh, c, chunk, n_chunks, offs_n, offs_d, valid, pair_mask,
    d_q, d_k, d_v, d_retain, d_carry, d_mix, d_pi, d_gamma, d_dn, d_cn, d_an, D: tl.constexpr, ATOMIC: tl.constexpr,
):  # fmt: skip
    """A chunk's input and mixing-coefficient gradients (added to zeroed buffers when ``ATOMIC``: each split
    program holds its hidden columns' part). D_n, c_n and γ are the last rows of D, c and Γ: their gradients
    (d_dn, d_cn, d_gamma) add to those rows."""
    last = offs_n == chunk - 1
    d_retain += tl.where(last, d_dn, 0.0)
    d_carry += tl.where(last, d_cn, 0.0)
    d_mix += tl.where(last[:, None], d_gamma[None, :], 0.0)
    rows = seq + offs_n[:, None] * D + offs_d[None, :]
    _put(dq_ptr + rows, d_q, valid[:, None], ATOMIC)
    _put(dk_ptr + rows, d_k, valid[:, None], ATOMIC)
    _put(dv_ptr + rows, d_v, valid[:, None], ATOMIC)
    _put(d_retain_ptr + gate + offs_n, d_retain, valid, ATOMIC)
    _put(d_carry_ptr + gate + offs_n, d_carry, valid, ATOMIC)
    _put(d_pi_ptr + gate + offs_n, d_pi, valid, ATOMIC)
    _put(d_a_last_ptr + bh * n_chunks + c, d_an, None, ATOMIC)
    _put(d_mix_ptr + gate * chunk + offs_n[:, None] * chunk + offs_n[None, :], d_mix, pair_mask, ATOMIC)


@triton.jit
def memory_forward_kernel(
    q_ptr, k_ptr, v_ptr, y_ptr,  # (BH, T, D)
    retain_ptr, carry_ptr, mix_ptr, pi_ptr, a_last_ptr,  # (BH, C, n), (BH, C, n), (BH, C, n, n), (BH, C, n), (BH, C)
    w1_ptr, w2_ptr, s1_ptr, s2_ptr,  # working state (BH, D, E), (BH, E, D): in = entering state, out = final
    ckpt_ptr,  # (BH, n_ckpt, 4·D·E): [W1, S1, W2, S2] at the start of chunks c_begin, c_begin + ckpt_every, …
    m1_ptr, m2_ptr,  # the anchor M_0 (H, D, E), (H, E, D) that the forget gate decays towards (if ANCHOR)
    sync_ptr, xch_ptr,  # split programs (SPLIT > 1): int32 [ticket, arrivals per group], zeroed; (BH, 2, SPLIT, n·D)
    T, chunk, n_chunks, c_begin, c_end, ckpt_every, n_ckpt, heads,
    D: tl.constexpr, E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
    WRITE_Y: tl.constexpr, PREC: tl.constexpr, ANCHOR: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    bh, part = _group(sync_ptr, SPLIT)
    E_PART: tl.constexpr = E // SPLIT
    e_lo = part * E_PART  # this program's hidden columns: e_lo … e_lo + E_PART − 1
    offs_n, offs_d, valid, tile_mask, pair_mask = _chunk_offsets(chunk, BLOCK_N, D)
    offs_e = tl.arange(0, BLOCK_E)
    tile = offs_n[:, None] * D + offs_d[None, :]
    exchanges = 1 + WRITE_Y  # per chunk
    m1_ptr += (bh % heads) * D * E
    m2_ptr += (bh % heads) * E * D
    w1_ptr += bh * D * E
    w2_ptr += bh * E * D
    s1_ptr += bh * D * E
    s2_ptr += bh * E * D
    state_size = 4 * D * E
    for c in range(c_begin, c_end):
        seq = bh * T * D + c * chunk * D
        k = _load_tile(k_ptr + seq, offs_n, offs_d, D, tile_mask)
        v = _load_tile(v_ptr + seq, offs_n, offs_d, D, tile_mask)
        gate, retain, carry, gamma, pi, d_n, c_n, a_n = _chunk_mixing(
            retain_ptr, carry_ptr, mix_ptr, pi_ptr, a_last_ptr, bh, c, chunk, n_chunks, offs_n, valid
        )
        is_ckpt = ((c - c_begin) % ckpt_every) == 0
        ckpt = ckpt_ptr + (bh * n_ckpt + (c - c_begin) // ckpt_every) * state_size

        z = _key_path_partial(k, w1_ptr, w2_ptr, offs_d, offs_e, e_lo, D, E, E_PART, BLOCK_E, PREC)
        arrival = (c - c_begin) * exchanges
        z = _exchange(z, tile, sync_ptr, xch_ptr, bh, part, arrival, SPLIT, BLOCK_N * D)
        delta2 = tl.where(tile_mask, _key_path_finish(z, k, v, D)[3], 0.0)
        if WRITE_Y:
            q = _load_tile(q_ptr + seq, offs_n, offs_d, D, tile_mask)
            mix = _load_tile(mix_ptr + gate * chunk, offs_n, offs_n, chunk, pair_mask)
            scores1 = tl.dot(q, tl.trans(k), input_precision=PREC) * mix  # (Q Kᵀ) ⊙ Γ
            q_w2 = tl.zeros((BLOCK_N, D), dtype=tl.float32)
            q_s2 = tl.zeros((BLOCK_N, D), dtype=tl.float32)
            q_m2 = tl.zeros((BLOCK_N, D), dtype=tl.float32)
            aq_at = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float32)
        gamma_d2 = gamma[:, None] * delta2
        pi_d2 = pi[:, None] * delta2
        for e0 in range(e_lo, e_lo + E_PART, BLOCK_E):
            if ANCHOR:
                m1 = tl.load(m1_ptr + e0 + offs_d[:, None] * E + offs_e[None, :])
                m2 = tl.load(m2_ptr + e0 * D + offs_e[:, None] * D + offs_d[None, :])
            w1 = tl.load(w1_ptr + e0 + offs_d[:, None] * E + offs_e[None, :])
            s1 = tl.load(s1_ptr + e0 + offs_d[:, None] * E + offs_e[None, :])
            w2 = tl.load(w2_ptr + e0 * D + offs_e[:, None] * D + offs_d[None, :])
            s2 = tl.load(s2_ptr + e0 * D + offs_e[:, None] * D + offs_d[None, :])
            if is_ckpt:
                tl.store(ckpt + offs_d[:, None] * E + e0 + offs_e[None, :], w1)
                tl.store(ckpt + D * E + offs_d[:, None] * E + e0 + offs_e[None, :], s1)
                tl.store(ckpt + 2 * D * E + (e0 + offs_e[:, None]) * D + offs_d[None, :], w2)
                tl.store(ckpt + 3 * D * E + (e0 + offs_e[:, None]) * D + offs_d[None, :], s2)
            hidden = tl.dot(k, w1, input_precision=PREC)
            act = _gelu(hidden)
            delta1 = tl.dot(delta2, tl.trans(w2), input_precision=PREC) * _gelu_d(hidden)
            delta1 = tl.where(tile_mask, delta1, 0.0)
            if WRITE_Y:
                hq = (
                    retain[:, None] * tl.dot(q, w1, input_precision=PREC)
                    + carry[:, None] * tl.dot(q, s1, input_precision=PREC)
                    - tl.dot(scores1, delta1, input_precision=PREC)
                )
                if ANCHOR:
                    hq += (1.0 - retain)[:, None] * tl.dot(q, m1, input_precision=PREC)
                aq = _gelu(hq)
                q_w2 += tl.dot(aq, w2, input_precision=PREC)
                q_s2 += tl.dot(aq, s2, input_precision=PREC)
                if ANCHOR:
                    q_m2 += tl.dot(aq, m2, input_precision=PREC)
                aq_at += tl.dot(aq, tl.trans(act), input_precision=PREC)
            k_t = tl.trans(k)
            act_t = tl.trans(act)
            new_w1 = d_n * w1 + c_n * s1 - tl.dot(k_t, gamma[:, None] * delta1, input_precision=PREC)
            new_s1 = a_n * s1 - tl.dot(k_t, pi[:, None] * delta1, input_precision=PREC)
            new_w2 = d_n * w2 + c_n * s2 - tl.dot(act_t, gamma_d2, input_precision=PREC)
            if ANCHOR:
                new_w1 += (1.0 - d_n) * m1
                new_w2 += (1.0 - d_n) * m2
            new_s2 = a_n * s2 - tl.dot(act_t, pi_d2, input_precision=PREC)
            tl.store(w1_ptr + offs_d[:, None] * E + e0 + offs_e[None, :], new_w1)
            tl.store(s1_ptr + offs_d[:, None] * E + e0 + offs_e[None, :], new_s1)
            tl.store(w2_ptr + (e0 + offs_e[:, None]) * D + offs_d[None, :], new_w2)
            tl.store(s2_ptr + (e0 + offs_e[:, None]) * D + offs_d[None, :], new_s2)
        if WRITE_Y:
            zq = retain[:, None] * q_w2 + carry[:, None] * q_s2 - tl.dot(aq_at * mix, delta2, input_precision=PREC)
            if ANCHOR:
                zq += (1.0 - retain)[:, None] * q_m2
            zq = _exchange(zq, tile, sync_ptr, xch_ptr, bh, part, arrival + 1, SPLIT, BLOCK_N * D)
            normed_q, _ = _ln(zq, D)
            if part == 0:  # every part holds the whole Zq
                tl.store(y_ptr + seq + tile, q + normed_q, mask=tile_mask)
        tl.debug_barrier()  # the next chunk reads the state this one wrote


@triton.jit
def memory_backward_kernel(
    q_ptr, k_ptr, v_ptr, dy_ptr, dq_ptr, dk_ptr, dv_ptr,  # (BH, T, D)
    retain_ptr, carry_ptr, mix_ptr, pi_ptr, a_last_ptr,  # as in the forward kernel
    d_retain_ptr, d_carry_ptr, d_mix_ptr, d_pi_ptr, d_a_last_ptr,  # their gradients, same shapes
    states_ptr,  # (BH, n_states, 4·D·E): the state at the start of chunk c_begin + j in slot j
    dw1_ptr, dw2_ptr, ds1_ptr, ds2_ptr,  # carried state gradients (BH, D, E) / (BH, E, D), updated in place
    x_ptr,  # scratch (BH, BLOCK_N, E): the part of ∂/∂H known before dZ
    m1_ptr, m2_ptr,  # the anchor M_0 (H, D, E), (H, E, D), as in the forward kernel (if ANCHOR)
    dm1_ptr, dm2_ptr,  # its gradient per program (BH, D, E), (BH, E, D), accumulated over the chunks
    sync_ptr, xch_ptr,  # as in the forward kernel; with SPLIT > 1 the input and gate gradients must be zeroed
    T, chunk, n_chunks, c_begin, c_end, n_states, heads,
    D: tl.constexpr, E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, PREC: tl.constexpr,
    ANCHOR: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    """Split programs (SPLIT > 1) each walk their E / SPLIT hidden columns and exchange the three sums over the
    hidden width that pass through a LayerNorm (Z, Zq and ∂/∂Δ2); every other gradient is a sum of their parts
    (added atomically), except the terms outside the hidden sums (∂/∂Q ∋ dY, ∂/∂K ∋ ∂/∂Err), which part 0 adds."""
    bh, part = _group(sync_ptr, SPLIT)
    E_PART: tl.constexpr = E // SPLIT
    e_lo = part * E_PART
    lead = tl.where(part == 0, 1.0, 0.0)
    offs_n, offs_d, valid, tile_mask, pair_mask = _chunk_offsets(chunk, BLOCK_N, D)
    tile = offs_n[:, None] * D + offs_d[None, :]
    offs_e = tl.arange(0, BLOCK_E)
    m1_ptr += (bh % heads) * D * E
    m2_ptr += (bh % heads) * E * D
    dm1_ptr += bh * D * E
    dm2_ptr += bh * E * D
    dw1_ptr += bh * D * E
    dw2_ptr += bh * E * D
    ds1_ptr += bh * D * E
    ds2_ptr += bh * E * D
    x_ptr += bh * BLOCK_N * E
    de_tile = offs_d[:, None] * E + offs_e[None, :]  # offsets of a (D, BLOCK_E) block of a (D, E) matrix
    ed_tile = offs_e[:, None] * D + offs_d[None, :]  # … of a (BLOCK_E, D) block of an (E, D) matrix
    x_tile = offs_n[:, None] * E + offs_e[None, :]
    for step in range(0, c_end - c_begin):
        c = c_end - 1 - step
        state = states_ptr + (bh * n_states + c - c_begin) * 4 * D * E
        w1_ptr = state
        s1_ptr = state + D * E
        w2_ptr = state + 2 * D * E
        s2_ptr = state + 3 * D * E
        seq = bh * T * D + c * chunk * D
        gate, retain, carry, gamma, pi, d_n, c_n, a_n = _chunk_mixing(
            retain_ptr, carry_ptr, mix_ptr, pi_ptr, a_last_ptr, bh, c, chunk, n_chunks, offs_n, valid
        )
        q, k, v, dy, mix = _load_backward_chunk(
            q_ptr, k_ptr, v_ptr, dy_ptr, mix_ptr, seq, gate, chunk, offs_n, offs_d, tile_mask, pair_mask, D
        )

        # Recompute the chunk's forward (pass A: key path; pass B: query path).
        z = _key_path_partial(k, w1_ptr, w2_ptr, offs_d, offs_e, e_lo, D, E, E_PART, BLOCK_E, PREC)
        z = _exchange(z, tile, sync_ptr, xch_ptr, bh, part, 3 * step, SPLIT, BLOCK_N * D)
        normed, inv_std, err, delta2 = _key_path_finish(z, k, v, D)
        delta2 = tl.where(tile_mask, delta2, 0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PREC)
        scores1 = qk * mix
        q_w2 = tl.zeros((BLOCK_N, D), dtype=tl.float32)
        q_s2 = tl.zeros((BLOCK_N, D), dtype=tl.float32)
        q_m2 = tl.zeros((BLOCK_N, D), dtype=tl.float32)
        aq_at = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float32)
        for e0 in range(e_lo, e_lo + E_PART, BLOCK_E):
            w1 = tl.load(w1_ptr + e0 + de_tile)
            s1 = tl.load(s1_ptr + e0 + de_tile)
            w2 = tl.load(w2_ptr + e0 * D + ed_tile)
            s2 = tl.load(s2_ptr + e0 * D + ed_tile)
            hidden = tl.dot(k, w1, input_precision=PREC)
            act = _gelu(hidden)
            delta1 = tl.where(tile_mask, tl.dot(delta2, tl.trans(w2), input_precision=PREC) * _gelu_d(hidden), 0.0)
            hq = (
                retain[:, None] * tl.dot(q, w1, input_precision=PREC)
                + carry[:, None] * tl.dot(q, s1, input_precision=PREC)
                - tl.dot(scores1, delta1, input_precision=PREC)
            )
            if ANCHOR:
                hq += (1.0 - retain)[:, None] * tl.dot(q, tl.load(m1_ptr + e0 + de_tile), input_precision=PREC)
            aq = _gelu(hq)
            q_w2 += tl.dot(aq, w2, input_precision=PREC)
            q_s2 += tl.dot(aq, s2, input_precision=PREC)
            if ANCHOR:
                q_m2 += tl.dot(aq, tl.load(m2_ptr + e0 * D + ed_tile), input_precision=PREC)
            aq_at += tl.dot(aq, tl.trans(act), input_precision=PREC)
        zq = retain[:, None] * q_w2 + carry[:, None] * q_s2 - tl.dot(aq_at * mix, delta2, input_precision=PREC)
        if ANCHOR:
            zq += (1.0 - retain)[:, None] * q_m2
        zq = _exchange(zq, tile, sync_ptr, xch_ptr, bh, part, 3 * step + 1, SPLIT, BLOCK_N * D)
        normed_q, inv_std_q = _ln(zq, D)

        # Output: Y = Q + LN(Zq).
        d_zq = tl.where(tile_mask, _ln_back(normed_q, inv_std_q, dy, D), 0.0)
        d_q = lead * dy
        d_retain = tl.sum(d_zq * (q_w2 - q_m2), axis=1)  # q_m2 = 0 without an anchor
        d_carry = tl.sum(d_zq * q_s2, axis=1)
        dzq_d2 = tl.dot(d_zq, tl.trans(delta2), input_precision=PREC)  # dZq Δ2ᵀ
        d_mix = -dzq_d2 * aq_at
        m2 = -dzq_d2 * mix
        d_delta2 = -tl.dot(tl.trans(aq_at * mix), d_zq, input_precision=PREC)
        retain_dzq = retain[:, None] * d_zq
        carry_dzq = carry[:, None] * d_zq
        t2 = tl.zeros((BLOCK_N, D), dtype=tl.float32)  # Σ_e A dW2'
        t2s = tl.zeros((BLOCK_N, D), dtype=tl.float32)  # Σ_e A dS2'
        d_k = tl.zeros((BLOCK_N, D), dtype=tl.float32)
        dhq_d1 = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float32)  # dHq Δ1ᵀ
        d_gamma = tl.zeros((BLOCK_N,), dtype=tl.float32)
        d_pi = tl.zeros((BLOCK_N,), dtype=tl.float32)
        d_dn = 0.0
        d_cn = 0.0
        d_an = 0.0
        gamma_d2 = gamma[:, None] * delta2
        pi_d2 = pi[:, None] * delta2
        # Pass C: per block of E, everything that does not need dZ.
        for e0 in range(e_lo, e_lo + E_PART, BLOCK_E):
            w1 = tl.load(w1_ptr + e0 + de_tile)
            s1 = tl.load(s1_ptr + e0 + de_tile)
            w2 = tl.load(w2_ptr + e0 * D + ed_tile)
            s2 = tl.load(s2_ptr + e0 * D + ed_tile)
            dw1 = tl.load(dw1_ptr + e0 + de_tile)
            ds1 = tl.load(ds1_ptr + e0 + de_tile)
            dw2 = tl.load(dw2_ptr + e0 * D + ed_tile)
            ds2 = tl.load(ds2_ptr + e0 * D + ed_tile)
            hidden = tl.dot(k, w1, input_precision=PREC)
            act = _gelu(hidden)
            gd = _gelu_d(hidden)
            back = tl.dot(delta2, tl.trans(w2), input_precision=PREC)  # Δ2 W2ᵀ
            delta1 = tl.where(tile_mask, back * gd, 0.0)
            q_w1 = tl.dot(q, w1, input_precision=PREC)
            q_s1 = tl.dot(q, s1, input_precision=PREC)
            hq = retain[:, None] * q_w1 + carry[:, None] * q_s1 - tl.dot(scores1, delta1, input_precision=PREC)
            if ANCHOR:
                anchor1 = tl.load(m1_ptr + e0 + de_tile)
                anchor2 = tl.load(m2_ptr + e0 * D + ed_tile)
                q_m1 = tl.dot(q, anchor1, input_precision=PREC)
                hq += (1.0 - retain)[:, None] * q_m1
            aq = _gelu(hq)
            # Query path, layer 2 (inputs Aq, key-side A, Δ2).
            d_aq = (
                tl.dot(retain_dzq, tl.trans(w2), input_precision=PREC)
                + tl.dot(carry_dzq, tl.trans(s2), input_precision=PREC)
                + tl.dot(m2, act, input_precision=PREC)
            )
            if ANCHOR:
                d_aq += tl.dot(d_zq - retain_dzq, tl.trans(anchor2), input_precision=PREC)
            d_act = (
                tl.dot(tl.trans(m2), aq, input_precision=PREC)
                - tl.dot(gamma_d2, tl.trans(dw2), input_precision=PREC)
                - tl.dot(pi_d2, tl.trans(ds2), input_precision=PREC)
            )
            t2 += tl.dot(act, dw2, input_precision=PREC)
            t2s += tl.dot(act, ds2, input_precision=PREC)
            d_dn += tl.sum(dw1 * w1) + tl.sum(dw2 * w2)
            d_cn += tl.sum(dw1 * s1) + tl.sum(dw2 * s2)
            d_an += tl.sum(ds1 * s1) + tl.sum(ds2 * s2)
            aq_t = tl.trans(aq)
            if PREC == "tf32":  # Aqᵀ(D ⊙ dZq) as (D ⊙ Aq)ᵀ dZq: the products share dZq, in shared memory once
                new_dw2 = d_n * dw2 + tl.dot(tl.trans(retain[:, None] * aq), d_zq, input_precision=PREC)
                new_ds2 = c_n * dw2 + a_n * ds2 + tl.dot(tl.trans(carry[:, None] * aq), d_zq, input_precision=PREC)
            else:  # in fp32 that layout costs shared memory instead
                new_dw2 = d_n * dw2 + tl.dot(aq_t, retain_dzq, input_precision=PREC)
                new_ds2 = c_n * dw2 + a_n * ds2 + tl.dot(aq_t, carry_dzq, input_precision=PREC)
            # Query path, layer 1 (inputs Q, key-side K, Δ1).
            d_hq = tl.where(tile_mask, d_aq * _gelu_d(hq), 0.0)
            d_retain += tl.sum(d_hq * q_w1, axis=1)
            d_carry += tl.sum(d_hq * q_s1, axis=1)
            dhq_d1 += tl.dot(d_hq, tl.trans(delta1), input_precision=PREC)
            retain_dhq = retain[:, None] * d_hq
            carry_dhq = carry[:, None] * d_hq
            d_q += tl.dot(retain_dhq, tl.trans(w1), input_precision=PREC)
            d_q += tl.dot(carry_dhq, tl.trans(s1), input_precision=PREC)
            q_t = tl.trans(q)
            if ANCHOR:  # M' = D_n M + (1 − D_n) M_0 + …, and (1 − D) (Q M_0) in Hq, (1 − D) (Aq M_0) in Zq
                d_retain -= tl.sum(d_hq * q_m1, axis=1)
                d_dn -= tl.sum(dw1 * anchor1) + tl.sum(dw2 * anchor2)
                d_q += tl.dot(d_hq - retain_dhq, tl.trans(anchor1), input_precision=PREC)
                dm1 = (1.0 - d_n) * dw1 + tl.dot(q_t, d_hq - retain_dhq, input_precision=PREC)
                if PREC == "tf32":
                    dm2 = tl.dot(tl.trans((1.0 - retain)[:, None] * aq), d_zq, input_precision=PREC)
                else:
                    dm2 = tl.dot(aq_t, d_zq - retain_dzq, input_precision=PREC)
                dm2 += (1.0 - d_n) * dw2
                tl.store(dm1_ptr + e0 + de_tile, tl.load(dm1_ptr + e0 + de_tile) + dm1)
                tl.store(dm2_ptr + e0 * D + ed_tile, tl.load(dm2_ptr + e0 * D + ed_tile) + dm2)
            new_dw1 = d_n * dw1 + tl.dot(q_t, retain_dhq, input_precision=PREC)
            new_ds1 = c_n * dw1 + a_n * ds1 + tl.dot(q_t, carry_dhq, input_precision=PREC)
            # State updates of layer 1: W1' = … − Kᵀ(γ⊙Δ1), S1' = … − Kᵀ(π⊙Δ1).
            k_dw1 = tl.dot(k, dw1, input_precision=PREC)
            k_ds1 = tl.dot(k, ds1, input_precision=PREC)
            d_delta1 = (
                -gamma[:, None] * k_dw1 - pi[:, None] * k_ds1 - tl.dot(tl.trans(scores1), d_hq, input_precision=PREC)
            )
            d_gamma -= tl.sum(delta1 * k_dw1, axis=1)
            d_pi -= tl.sum(delta1 * k_ds1, axis=1)
            d_k -= tl.dot(gamma[:, None] * delta1, tl.trans(dw1), input_precision=PREC)
            d_k -= tl.dot(pi[:, None] * delta1, tl.trans(ds1), input_precision=PREC)
            # Key path through Δ1 = (Δ2 W2ᵀ) ⊙ σ'(H).
            d_back = d_delta1 * gd
            tl.store(x_ptr + e0 + x_tile, d_delta1 * back * _gelu_dd(hidden) + d_act * gd)
            d_delta2 += tl.dot(d_back, w2, input_precision=PREC)
            new_dw2 += tl.dot(tl.trans(d_back), delta2, input_precision=PREC)
            tl.store(dw1_ptr + e0 + de_tile, new_dw1)
            tl.store(ds1_ptr + e0 + de_tile, new_ds1)
            tl.store(dw2_ptr + e0 * D + ed_tile, new_dw2)
            tl.store(ds2_ptr + e0 * D + ed_tile, new_ds2)
        d_delta2 += -gamma[:, None] * t2 - pi[:, None] * t2s
        d_delta2 = tl.where(tile_mask, d_delta2, 0.0)
        d_gamma -= tl.sum(delta2 * t2, axis=1)
        d_pi -= tl.sum(delta2 * t2s, axis=1)
        m1 = -dhq_d1 * mix
        d_mix += -dhq_d1 * qk
        d_q += tl.dot(m1, k, input_precision=PREC)
        d_k += tl.dot(tl.trans(m1), q, input_precision=PREC)
        d_delta2 = _exchange(d_delta2, tile, sync_ptr, xch_ptr, bh, part, 3 * step + 2, SPLIT, BLOCK_N * D)
        # Δ2 = J(Z) Err, Err = K + N − V.
        d_err = _ln_back(normed, inv_std, d_delta2, D)
        d_k += lead * d_err
        gn = tl.sum(err * normed, axis=1)
        un = tl.sum(d_delta2 * normed, axis=1)
        a_coef = tl.sum(d_delta2 * err, axis=1) - tl.sum(d_delta2, axis=1) * tl.sum(err, axis=1) / D
        r_d = inv_std / D
        d_z = (
            _ln_back(normed, inv_std, d_err, D)
            - (r_d * inv_std * a_coef)[:, None] * normed
            + (r_d * inv_std / D * gn * un)[:, None] * normed
            - (r_d * un)[:, None] * delta2
            - (r_d * gn)[:, None] * d_err
        )
        d_z = tl.where(tile_mask, d_z, 0.0)
        tl.debug_barrier()  # pass D reads the x scratch and state gradients written above
        # Pass D: Z = σ(K W1) W2.
        for e0 in range(e_lo, e_lo + E_PART, BLOCK_E):
            w1 = tl.load(w1_ptr + e0 + de_tile)
            w2 = tl.load(w2_ptr + e0 * D + ed_tile)
            hidden = tl.dot(k, w1, input_precision=PREC)
            act = _gelu(hidden)
            d_hidden = tl.load(x_ptr + e0 + x_tile) + tl.dot(d_z, tl.trans(w2), input_precision=PREC) * _gelu_d(hidden)
            d_hidden = tl.where(tile_mask, d_hidden, 0.0)
            d_k += tl.dot(d_hidden, tl.trans(w1), input_precision=PREC)
            tl.store(
                dw1_ptr + e0 + de_tile,
                tl.load(dw1_ptr + e0 + de_tile) + tl.dot(tl.trans(k), d_hidden, input_precision=PREC),
            )
            tl.store(
                dw2_ptr + e0 * D + ed_tile,
                tl.load(dw2_ptr + e0 * D + ed_tile) + tl.dot(tl.trans(act), d_z, input_precision=PREC),
            )
        _store_chunk_grads(
            dq_ptr, dk_ptr, dv_ptr, d_retain_ptr, d_carry_ptr, d_mix_ptr, d_pi_ptr, d_a_last_ptr, seq, gate, bh, c,
            chunk, n_chunks, offs_n, offs_d, valid, pair_mask, d_q, d_k, -lead * d_err, d_retain, d_carry, d_mix,
            d_pi, d_gamma, d_dn, d_cn, d_an, D, SPLIT > 1,
        )  # fmt: skip
        tl.debug_barrier()  # the next (earlier) chunk reads the state gradients written here


# --------------------------------------------------------------------------------------------------
# Depth 1: a linear memory M(x) = x W (with η = 0, Gated DeltaNet). The state (D × D) stays in registers.
# --------------------------------------------------------------------------------------------------


@triton.jit
def _load_square(ptr, offs_d, D: tl.constexpr):
    return tl.load(ptr + offs_d[:, None] * D + offs_d[None, :])


@triton.jit
def linear_memory_forward_kernel(
    q_ptr, k_ptr, v_ptr, y_ptr,  # (BH, T, D)
    retain_ptr, carry_ptr, mix_ptr, pi_ptr, a_last_ptr,  # as in memory_forward_kernel
    w_ptr, s_ptr,  # state (BH, D, D): in = entering state, out = final
    ckpt_ptr,  # (BH, n_ckpt, 2·D·D): [W, S] at the start of chunks c_begin, c_begin + ckpt_every, …
    m_ptr,  # the anchor M_0 (H, D, D) that the forget gate decays towards (if ANCHOR)
    T, chunk, n_chunks, c_begin, c_end, ckpt_every, n_ckpt, heads,
    D: tl.constexpr, BLOCK_N: tl.constexpr, WRITE_Y: tl.constexpr, PREC: tl.constexpr, ANCHOR: tl.constexpr,
):  # fmt: skip
    """Err = K W − V = Δ;  Y = D ⊙ (Q W) + c ⊙ (Q S) − ((Q Kᵀ) ⊙ Γ) Δ;  W' = D_n W + c_n S − Kᵀ(γ⊙Δ),
    S' = A_n S − Kᵀ(π⊙Δ) (chunk_vjp.chunk_forward at depth 1); with an anchor M_0 (decision 9), Y gains
    (1 − D) ⊙ (Q M_0) and W' gains (1 − D_n) M_0."""
    bh = tl.program_id(0)
    offs_n, offs_d, valid, tile_mask, pair_mask = _chunk_offsets(chunk, BLOCK_N, D)
    square = offs_d[:, None] * D + offs_d[None, :]
    if ANCHOR:
        anchor = _load_square(m_ptr + (bh % heads) * D * D, offs_d, D)
    w = _load_square(w_ptr + bh * D * D, offs_d, D)
    s = _load_square(s_ptr + bh * D * D, offs_d, D)
    for c in range(c_begin, c_end):
        seq = bh * T * D + c * chunk * D
        k = _load_tile(k_ptr + seq, offs_n, offs_d, D, tile_mask)
        v = _load_tile(v_ptr + seq, offs_n, offs_d, D, tile_mask)
        gate, retain, carry, gamma, pi, d_n, c_n, a_n = _chunk_mixing(
            retain_ptr, carry_ptr, mix_ptr, pi_ptr, a_last_ptr, bh, c, chunk, n_chunks, offs_n, valid
        )
        if ((c - c_begin) % ckpt_every) == 0:
            ckpt = ckpt_ptr + (bh * n_ckpt + (c - c_begin) // ckpt_every) * 2 * D * D
            tl.store(ckpt + square, w)
            tl.store(ckpt + D * D + square, s)
        delta = tl.where(tile_mask, tl.dot(k, w, input_precision=PREC) - v, 0.0)
        if WRITE_Y:
            q = _load_tile(q_ptr + seq, offs_n, offs_d, D, tile_mask)
            mix = _load_tile(mix_ptr + gate * chunk, offs_n, offs_n, chunk, pair_mask)
            scores = tl.dot(q, tl.trans(k), input_precision=PREC) * mix
            y = (
                retain[:, None] * tl.dot(q, w, input_precision=PREC)
                + carry[:, None] * tl.dot(q, s, input_precision=PREC)
                - tl.dot(scores, delta, input_precision=PREC)
            )
            if ANCHOR:
                y += (1.0 - retain)[:, None] * tl.dot(q, anchor, input_precision=PREC)
            tl.store(y_ptr + seq + offs_n[:, None] * D + offs_d[None, :], y, mask=tile_mask)
        k_t = tl.trans(k)
        new_w = d_n * w + c_n * s - tl.dot(k_t, gamma[:, None] * delta, input_precision=PREC)
        if ANCHOR:
            new_w += (1.0 - d_n) * anchor
        s = a_n * s - tl.dot(k_t, pi[:, None] * delta, input_precision=PREC)
        w = new_w
    tl.store(w_ptr + bh * D * D + square, w)
    tl.store(s_ptr + bh * D * D + square, s)


@triton.jit
def linear_memory_backward_kernel(
    q_ptr, k_ptr, v_ptr, dy_ptr, dq_ptr, dk_ptr, dv_ptr,  # (BH, T, D)
    retain_ptr, carry_ptr, mix_ptr, pi_ptr, a_last_ptr,  # as in the forward kernel
    d_retain_ptr, d_carry_ptr, d_mix_ptr, d_pi_ptr, d_a_last_ptr,  # their gradients, same shapes
    states_ptr,  # (BH, n_states, 2·D·D): the state at the start of chunk c_begin + j in slot j
    dw_ptr, ds_ptr,  # carried state gradients (BH, D, D), updated in place
    m_ptr, dm_ptr,  # the anchor M_0 (H, D, D) and its gradient per program (BH, D, D), accumulated (if ANCHOR)
    T, chunk, n_chunks, c_begin, c_end, n_states, heads,
    D: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr, ANCHOR: tl.constexpr,
):  # fmt: skip
    """A stretch of chunks in reverse: chunk_vjp.chunk_backward at depth 1, the state gradients in registers."""
    bh = tl.program_id(0)
    offs_n, offs_d, valid, tile_mask, pair_mask = _chunk_offsets(chunk, BLOCK_N, D)
    square = offs_d[:, None] * D + offs_d[None, :]
    if ANCHOR:
        anchor = _load_square(m_ptr + (bh % heads) * D * D, offs_d, D)
        d_anchor = _load_square(dm_ptr + bh * D * D, offs_d, D)
    dw = _load_square(dw_ptr + bh * D * D, offs_d, D)
    ds = _load_square(ds_ptr + bh * D * D, offs_d, D)
    for step in range(0, c_end - c_begin):
        c = c_end - 1 - step
        state = states_ptr + (bh * n_states + c - c_begin) * 2 * D * D
        w = _load_square(state, offs_d, D)
        s = _load_square(state + D * D, offs_d, D)
        seq = bh * T * D + c * chunk * D
        gate, retain, carry, gamma, pi, d_n, c_n, a_n = _chunk_mixing(
            retain_ptr, carry_ptr, mix_ptr, pi_ptr, a_last_ptr, bh, c, chunk, n_chunks, offs_n, valid
        )
        q, k, v, dy, mix = _load_backward_chunk(
            q_ptr, k_ptr, v_ptr, dy_ptr, mix_ptr, seq, gate, chunk, offs_n, offs_d, tile_mask, pair_mask, D
        )
        delta = tl.where(tile_mask, tl.dot(k, w, input_precision=PREC) - v, 0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PREC)

        # State updates W' = D_n W + c_n S − Kᵀ(γ⊙Δ), S' = A_n S − Kᵀ(π⊙Δ).
        d_dn = tl.sum(dw * w)
        d_cn = tl.sum(dw * s)
        d_an = tl.sum(ds * s)
        k_dw = tl.dot(k, dw, input_precision=PREC)
        k_ds = tl.dot(k, ds, input_precision=PREC)
        d_k = -tl.dot(gamma[:, None] * delta, tl.trans(dw), input_precision=PREC)
        d_k -= tl.dot(pi[:, None] * delta, tl.trans(ds), input_precision=PREC)
        d_delta = -gamma[:, None] * k_dw - pi[:, None] * k_ds
        d_gamma = -tl.sum(delta * k_dw, axis=1)
        d_pi = -tl.sum(delta * k_ds, axis=1)

        # Query path: Y = D ⊙ (Q W) + c ⊙ (Q S) − ((Q Kᵀ) ⊙ Γ) Δ.
        d_retain = tl.sum(dy * tl.dot(q, w, input_precision=PREC), axis=1)
        d_carry = tl.sum(dy * tl.dot(q, s, input_precision=PREC), axis=1)
        d_scores = -tl.dot(dy, tl.trans(delta), input_precision=PREC)
        d_mix = d_scores * qk
        masked = d_scores * mix
        d_delta -= tl.dot(tl.trans(qk * mix), dy, input_precision=PREC)
        d_k += tl.dot(tl.trans(masked), q, input_precision=PREC)
        retain_dy = retain[:, None] * dy
        carry_dy = carry[:, None] * dy
        d_q = (
            tl.dot(retain_dy, tl.trans(w), input_precision=PREC)
            + tl.dot(carry_dy, tl.trans(s), input_precision=PREC)
            + tl.dot(masked, k, input_precision=PREC)
        )
        q_t = tl.trans(q)
        if ANCHOR:  # (1 − D) ⊙ (Q M_0) in Y and (1 − D_n) M_0 in W'
            d_retain -= tl.sum(dy * tl.dot(q, anchor, input_precision=PREC), axis=1)
            d_dn -= tl.sum(dw * anchor)
            d_q += tl.dot(dy - retain_dy, tl.trans(anchor), input_precision=PREC)
            d_anchor += (1.0 - d_n) * dw + tl.dot(q_t, dy - retain_dy, input_precision=PREC)
        new_dw = d_n * dw + tl.dot(q_t, retain_dy, input_precision=PREC)
        ds = c_n * dw + a_n * ds + tl.dot(q_t, carry_dy, input_precision=PREC)

        # Key path: Δ = K W − V.
        d_delta = tl.where(tile_mask, d_delta, 0.0)
        d_k += tl.dot(d_delta, tl.trans(w), input_precision=PREC)
        dw = new_dw + tl.dot(tl.trans(k), d_delta, input_precision=PREC)

        _store_chunk_grads(
            dq_ptr, dk_ptr, dv_ptr, d_retain_ptr, d_carry_ptr, d_mix_ptr, d_pi_ptr, d_a_last_ptr, seq, gate, bh, c,
            chunk, n_chunks, offs_n, offs_d, valid, pair_mask, d_q, d_k, -d_delta, d_retain, d_carry, d_mix, d_pi,
            d_gamma, d_dn, d_cn, d_an, D, False,
        )  # fmt: skip
    tl.store(dw_ptr + bh * D * D + square, dw)
    tl.store(ds_ptr + bh * D * D + square, ds)
    if ANCHOR:
        tl.store(dm_ptr + bh * D * D + square, d_anchor)
