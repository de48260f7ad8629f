"""The memory recurrence over whole chunks with a hand-written backward: Triton kernels, or their PyTorch twin.

:func:`memory_recurrence_fused` computes the same function as
:func:`titans.ops.recurrence.memory_recurrence_chunked`. A partial chunk at the start (a state that stopped
mid-chunk) and at the end run through the chunked path; the whole chunks in between run through
``_FusedChunks``, whose backward is :func:`titans.ops.chunk_vjp.chunk_backward` (``backend="torch"``) or the
Triton kernels of :mod:`titans.ops.fused_kernels` (``backend="triton"``, depth 1 and 2). Neither keeps a copy of the
state per chunk: the forward stores the state every ``checkpoint_every`` chunks and the backward recomputes
the states in between, one stretch at a time, last stretch first.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Literal

import torch
from torch import Tensor

from titans.ops.chunk_vjp import Mixing, chunk_backward, chunk_forward
from titans.ops.recurrence import RecurrentState, chunk_mixing, memory_recurrence_chunked

Backend = Literal["triton", "torch"]
Precision = Literal["ieee", "tf32"]
TRITON_MIN_BLOCK_E = 16  # the hidden dimension is streamed in blocks of 16 or 32 columns


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_unsupported_reason(
    depth: int, head_dim: int, hidden: int, dtype: torch.dtype, device: torch.device
) -> str | None:
    """Why the Triton kernels cannot run this memory (``None`` when they can)."""
    if not triton_available():
        return "Triton is not installed"
    if device.type != "cuda" and not triton_interpreting():
        return f"the tensors are on {device.type}, not CUDA (set TRITON_INTERPRET=1 to interpret the kernels)"
    if depth not in (1, 2):
        return f"the kernels are written for memory depth 1 and 2, this memory has depth {depth}"
    if dtype != torch.float32:
        return f"the kernels keep the state in float32, the inner dtype is {dtype}"
    if head_dim < 16 or head_dim & (head_dim - 1):
        return f"head_dim must be a power of two >= 16, got {head_dim}"
    if hidden % TRITON_MIN_BLOCK_E:
        return f"the hidden width (head_dim x expansion = {hidden}) must be a multiple of {TRITON_MIN_BLOCK_E}"
    return None


# --------------------------------------------------------------------------------------------------
# Whole chunks: forward and backward.
# --------------------------------------------------------------------------------------------------


def _chunk(t: Tensor, c: int, n: int) -> Tensor:
    return t[:, :, c * n : (c + 1) * n]


def _mix_at(mix: Mixing, c: int) -> Mixing:
    return Mixing(*(m[:, :, c] for m in mix))


def _torch_forward(q, k, v, mix: Mixing, state: list[Tensor], n: int, every: int, keep: bool, anchor=None):
    """Chunk loop with :func:`chunk_forward`: outputs, final state, and the state every ``every`` chunks."""
    depth = len(state) // 2
    weights, surprise = state[:depth], state[depth:]
    outputs, checkpoints = [], []
    for c in range(q.shape[2] // n):
        if keep and c % every == 0:
            checkpoints.append(weights + surprise)
        y, weights, surprise, _ = chunk_forward(
            _chunk(q, c, n), _chunk(k, c, n), _chunk(v, c, n), _mix_at(mix, c), weights, surprise, anchor
        )
        outputs.append(y)
    return torch.cat(outputs, dim=2), weights + surprise, checkpoints


def _torch_backward(
    q, k, v, mix: Mixing, checkpoints, grad_y, grad_state: list[Tensor], n: int, every: int, anchor=None
):
    depth = len(grad_state) // 2
    n_chunks = q.shape[2] // n
    grads_q, grads_k, grads_v = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    grads_mix = [torch.zeros_like(m) for m in mix]
    grad_w, grad_s = list(grad_state[:depth]), list(grad_state[depth:])
    grad_anchor = None if anchor is None else [torch.zeros_like(w) for w in grad_w]  # per program, summed below
    for group in reversed(range(len(checkpoints))):
        first, last = group * every, min(n_chunks, (group + 1) * every)
        states = [checkpoints[group]]
        for c in range(first, last - 1):
            s = states[-1]
            _, w, sp, _ = chunk_forward(
                _chunk(q, c, n), _chunk(k, c, n), _chunk(v, c, n), _mix_at(mix, c), s[:depth], s[depth:], anchor
            )
            states.append(w + sp)
        for c in reversed(range(first, last)):
            s = states[c - first]
            g = chunk_backward(
                _chunk(q, c, n), _chunk(k, c, n), _chunk(v, c, n), _mix_at(mix, c), s[:depth], s[depth:],
                _chunk(grad_y, c, n), grad_w, grad_s, anchor,
            )  # fmt: skip
            for full, part in ((grads_q, g.q), (grads_k, g.k), (grads_v, g.v)):
                _chunk(full, c, n).copy_(part)
            for full, part in zip(grads_mix, g.mixing):
                full[:, :, c] = part
            grad_w, grad_s = g.weights, g.surprise
            if grad_anchor is not None and g.anchor is not None:
                grad_anchor = [total + part for total, part in zip(grad_anchor, g.anchor)]
    anchor_grads = [] if grad_anchor is None else [g.sum(0) for g in grad_anchor]  # M_0 is shared over the batch
    return grads_q, grads_k, grads_v, Mixing(*grads_mix), grad_w + grad_s + anchor_grads


def _tuning(name: str, backward: bool, default: int) -> int:
    """A launch parameter, overridable for tuning (``benchmarks/tune_fused.py``): ``TITANS_FUSED_{name}_FWD`` /
    ``_BWD`` for one direction, ``TITANS_FUSED_{name}`` for both."""
    env = os.environ.get
    return int(env(f"TITANS_FUSED_{name}_{'BWD' if backward else 'FWD'}") or env(f"TITANS_FUSED_{name}") or default)


def _triton_launch_args(q: Tensor, n: int, hidden: int, precision: Precision, backward: bool, depth: int) -> dict:
    """Block sizes: the whole chunk (≥ 16 rows) and a block of the hidden width, and 8 warps: the fastest of the
    sweep in docs/benchmarks.md (``benchmarks/tune_fused.py``, H100, head 64, hidden 256). The hidden width goes
    in blocks of 32 (forward: 64 spill registers and take twice as long; backward: 16 is 15% slower), 16 for the
    backward of chunks over 32 rows (shared memory: 228 KB on Hopper), whose tf32 products fit only with 4 warps
    (8 need 254 KB; in fp32, 8 are faster: 453 against 715 ms at the issue-6 shape). Depth 1 holds its D × D
    state (and in the backward its gradient) in registers: 8 warps, where 4 spill (ptxas, sm_90, D = 64)."""
    block_n = max(16, 1 << (n - 1).bit_length())
    widest = 16 if backward and block_n > 32 else 32
    block_e = max(b for b in (16, 32) if b <= widest and hidden % b == 0)
    return {
        "D": q.shape[-1],
        "E": hidden,
        "BLOCK_N": block_n,
        "BLOCK_E": _tuning("BLOCK_E", backward, block_e),
        "PREC": precision,
        "num_warps": _tuning("WARPS", backward, 4 if backward and block_n > 32 and precision != "ieee" else 8),
        "num_stages": _tuning("STAGES", backward, 1),
    }


SPLIT_WARPS = 4  # warps of a split program: two fit on an SM (255 registers a thread)
SPLIT_PER_SM = 2


@functools.cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def resident_programs(block_n: int, multiprocessors: int) -> int:
    """How many split programs :func:`auto_split` lets run at once: two per SM, one for chunks over 32 rows."""
    return (SPLIT_PER_SM if block_n <= 32 else 1) * multiprocessors


def program_warps(programs: int, block_n: int, split: int, multiprocessors: int, default: int) -> int:
    """Warps of a depth-2 program: 4 when split, or when more programs than SMs run chunks of up to 32 rows, so
    that two share an SM instead of running in two waves (H100, ``configs/small.yaml``'s 192 (batch, head):
    56.3 ms with 4 warps against 80.7 with 8, docs/benchmarks.md); ``default`` otherwise."""
    if split > 1 or (block_n <= 32 and programs > multiprocessors):
        return SPLIT_WARPS
    return default


def auto_split(programs: int, hidden: int, block_e: int, resident: int) -> int:
    """The most programs per (batch, head) — a power of two, each owning whole blocks of hidden columns — while
    all ``programs`` × split still run at once (``resident`` of them fit on the GPU): split programs that wait
    for a later wave gain nothing (``benchmarks/tune_fused.py``, docs/benchmarks.md)."""
    split = 1
    while hidden % (2 * split * block_e) == 0 and programs * 2 * split <= resident:
        split *= 2
    return split


def split_programs(programs: int, hidden: int, block_e: int, block_n: int, device: torch.device) -> int:
    """How many programs share each of the ``programs`` (batch, head) of the depth-2 kernels, each owning
    hidden / split columns: :func:`auto_split` on CUDA, 1 elsewhere, or ``TITANS_FUSED_SPLIT`` (for tuning and
    the GPU tests). Split programs wait for each other, which the interpreter (one program after another)
    cannot do. Chunks over 32 rows split only while one program per SM suffices: on an H100 a split made the
    issue-6 shape slower (256 programs: 73.6 against 69.3 ms) and one 131,072-token sequence faster (128
    programs: 1699 against 1999 ms)."""
    setting = os.environ.get("TITANS_FUSED_SPLIT")
    if not setting:
        if device.type != "cuda":
            return 1
        return auto_split(programs, hidden, block_e, resident_programs(block_n, _multiprocessors(device.index or 0)))
    split = int(setting)
    if split < 1 or split & (split - 1) or hidden % (split * block_e):
        raise ValueError(
            f"TITANS_FUSED_SPLIT={split}: the hidden width {hidden} must split into a power-of-two number of "
            f"parts of whole {block_e}-column blocks"
        )
    if split > 1 and device.type != "cuda":
        raise ValueError(
            f"TITANS_FUSED_SPLIT={split} needs a CUDA device: interpreted programs cannot wait for each other"
        )
    return split


def _kernel(
    q: Tensor, n: int, hidden: int, precision: Precision, depth: int, backward: bool, anchored: bool = False
) -> tuple[Any, dict]:
    """The forward or backward kernel of a memory depth and its launch arguments (depth 1 keeps its D × D state
    in registers: it takes no hidden blocks).

    With an anchor at chunks over 32 rows, both depth-1 kernels run their products in full fp32: in tf32 they
    need 245,792 bytes of shared memory on an H100 (Triton 3.6), over the 232,448 there are. (The depth-2
    backward needed 237,568 until its Aq-side products shared dZq: 188,416 now.)"""
    from titans.ops import fused_kernels as kernels

    if os.environ.get("TITANS_FUSED_PRECISION"):  # for tuning (benchmarks/tune_fused.py --precision)
        precision = os.environ["TITANS_FUSED_PRECISION"]  # type: ignore[assignment]
    elif anchored and n > 32 and depth == 1:
        precision = "ieee"
    launch = _triton_launch_args(q, n, hidden, precision, backward, depth)
    if depth == 1:
        linear = kernels.linear_memory_backward_kernel if backward else kernels.linear_memory_forward_kernel
        return linear, {key: value for key, value in launch.items() if key not in ("E", "BLOCK_E")}
    launch["SPLIT"] = split_programs(q.shape[0] * q.shape[1], hidden, launch["BLOCK_E"], launch["BLOCK_N"], q.device)
    if backward and launch["BLOCK_N"] > 32 and precision != "ieee":
        launch["SPLIT"] = 1  # split, the tf32 backward of 64-row chunks needs 237,568 bytes of shared memory
    if q.is_cuda:
        programs = q.shape[0] * q.shape[1] * launch["SPLIT"]
        sms = _multiprocessors(q.device.index or 0)
        warps = program_warps(programs, launch["BLOCK_N"], launch["SPLIT"], sms, launch["num_warps"])
        launch["num_warps"] = _tuning("WARPS", backward, warps)
    return (kernels.memory_backward_kernel if backward else kernels.memory_forward_kernel), launch


# The checkpoint buffers hold [W1, S1, W2, S2] (depth 2) or [W, S] (depth 1) per slot; the kernels take the
# state as W…, S…: the slot order of each state tensor.
CHECKPOINT_ORDER = {1: (0, 1), 2: (0, 2, 1, 3)}


def _anchor_args(q: Tensor, anchor: list[Tensor] | None, depth: int) -> tuple[list[Tensor], dict]:
    """The kernels' anchor pointers (M_0 per layer, or q as an unread placeholder) and their ANCHOR flag."""
    pointers = [a.contiguous() for a in anchor] if anchor is not None else [q] * depth
    return pointers, {"ANCHOR": anchor is not None}


def _split_args(q: Tensor, depth: int, programs: int, split: int, launch: dict) -> list[Tensor]:
    """The depth-2 kernels' ticket and arrival counters (int32, zeroed: fresh per launch) and exchange slots;
    placeholders when each (batch, head) has one program."""
    if depth == 1:
        return []
    if split == 1:
        return [q, q]
    sync = torch.zeros(1 + programs, dtype=torch.int32, device=q.device)
    return [sync, q.new_empty(programs, 2, split, launch["BLOCK_N"] * q.shape[-1])]


def _triton_forward(
    q, k, v, mix: Mixing, state: list[Tensor], n: int, every: int, keep: bool, precision: Precision, anchor=None
):
    batch, heads, length, d = q.shape
    depth = len(state) // 2
    bh, n_chunks, hidden = batch * heads, length // n, state[0].shape[-1]
    work = [s.reshape(bh, *s.shape[2:]).clone() for s in state]  # W…, S… (working copies, fp32)
    n_ckpt = -(-n_chunks // every) if keep else 1
    ckpt = q.new_empty(bh, n_ckpt, 2 * depth * d * hidden)
    y = torch.empty_like(q)
    kernel, launch = _kernel(q, n, hidden, precision, depth, backward=False, anchored=anchor is not None)
    anchors, flag = _anchor_args(q, anchor, depth)
    split = launch.get("SPLIT", 1)
    kernel[(bh * split,)](
        q, k, v, y, *mix, *work, ckpt, *anchors, *_split_args(q, depth, bh, split, launch),
        length, n, n_chunks, 0, n_chunks, every if keep else n_chunks + 1, n_ckpt, heads,
        WRITE_Y=True, **launch, **flag,
    )  # fmt: skip
    final = [w.view(batch, heads, *w.shape[1:]) for w in work]
    return y, final, ckpt


def _triton_backward(
    q, k, v, mix: Mixing, ckpt: Tensor, grad_y, grad_state, n: int, every: int, precision: Precision, anchor=None
):
    batch, heads, length, d = q.shape
    depth = len(grad_state) // 2
    bh, n_chunks, hidden = batch * heads, length // n, grad_state[0].shape[-1]
    backward, launch = _kernel(q, n, hidden, precision, depth, backward=True, anchored=anchor is not None)
    forward, recompute = _kernel(q, n, hidden, precision, depth, backward=False, anchored=anchor is not None)
    split = launch.get("SPLIT", 1)
    new = torch.zeros_like if split > 1 else torch.empty_like  # split programs add their parts
    grad_q, grad_k, grad_v = new(q), new(k), new(v)
    grad_mix = Mixing(*(new(m) for m in mix))
    carried = [g.reshape(bh, *g.shape[2:]).contiguous().clone() for g in grad_state]  # dW…, dS…
    scratch = [q.new_empty(bh, launch["BLOCK_N"], hidden)] if depth == 2 else []  # ∂/∂H known before dZ
    stretch = q.new_empty(bh, every, 2 * depth * d * hidden)
    size = d * hidden
    anchors, flag = _anchor_args(q, anchor, depth)
    grad_anchor = [q.new_zeros(bh, *a.shape[1:]) for a in anchor] if anchor is not None else [q] * depth
    for group in reversed(range(ckpt.shape[1])):
        first, last = group * every, min(n_chunks, (group + 1) * every)
        if every == 1:
            states, n_states = ckpt[:, group:], ckpt.shape[1]
        else:  # the state at the start of every chunk of the stretch, recomputed from its checkpoint
            start = ckpt[:, group]
            work = [start[:, i * size : (i + 1) * size].clone() for i in CHECKPOINT_ORDER[depth]]
            forward[(bh * recompute.get("SPLIT", 1),)](
                q, k, v, q, *mix, *work, stretch, *anchors,
                *_split_args(q, depth, bh, recompute.get("SPLIT", 1), recompute),
                length, n, n_chunks, first, last, 1, every, heads,
                WRITE_Y=False, **recompute, **flag,
            )  # fmt: skip
            states, n_states = stretch, every
        backward[(bh * split,)](
            q, k, v, grad_y, grad_q, grad_k, grad_v, *mix, *grad_mix, states, *carried, *scratch,
            *anchors, *grad_anchor, *_split_args(q, depth, bh, split, launch),
            length, n, n_chunks, first, last, n_states, heads,
            **launch, **flag,
        )  # fmt: skip
    final = [g.view(batch, heads, *g.shape[1:]) for g in carried]
    if anchor is not None:  # M_0 is shared over the batch: sum the per-program gradients
        final += [g.view(batch, heads, *g.shape[1:]).sum(0) for g in grad_anchor]
    return grad_q, grad_k, grad_v, grad_mix, final


class _FusedChunks(torch.autograd.Function):
    """Whole chunks, aligned state: (q, k, v, mixing, W…, S…[, M_0…]) → (y, W'…, S'…). The anchor M_0 of
    decision 9 follows the state when ``config`` says it is there."""

    @staticmethod
    def forward(ctx, config, q, k, v, retain, carry, grad_mix, pi, a_last, *state_and_anchor):
        backend, n, every, precision, anchored = config
        mix = Mixing(retain, carry, grad_mix, pi, a_last)
        keep = torch.is_grad_enabled() or any(ctx.needs_input_grad)
        state, anchor = _split_anchor(list(state_and_anchor), anchored)
        if backend == "triton":
            y, final, ckpt = _triton_forward(q, k, v, mix, state, n, every, keep, precision, anchor)
            ctx.save_for_backward(q, k, v, *mix, ckpt, *(anchor or []))
        else:
            y, final, checkpoints = _torch_forward(q, k, v, mix, list(state), n, every, keep, anchor)
            ctx.checkpoints = checkpoints
            ctx.save_for_backward(q, k, v, *mix, *(anchor or []))
        ctx.config = config
        return (y, *final)

    @staticmethod
    def backward(ctx, grad_y, *grad_state):
        backend, n, every, precision, anchored = ctx.config
        q, k, v, *rest = ctx.saved_tensors
        mix = Mixing(*rest[:5])
        grad_y = grad_y.contiguous()
        if backend == "triton":
            anchor = list(rest[6:]) if anchored else None
            gq, gk, gv, gmix, gstate = _triton_backward(
                q, k, v, mix, rest[5], grad_y, list(grad_state), n, every, precision, anchor
            )
        else:
            anchor = list(rest[5:]) if anchored else None
            gq, gk, gv, gmix, gstate = _torch_backward(
                q, k, v, mix, ctx.checkpoints, grad_y, list(grad_state), n, every, anchor
            )
        return (None, gq, gk, gv, *gmix, *gstate)


def _split_anchor(tensors: list[Tensor], anchored: bool) -> tuple[list[Tensor], list[Tensor] | None]:
    """(W…, S…, M_0…) → ([W…, S…], [M_0…]) when anchored, else (tensors, None)."""
    if not anchored:
        return tensors, None
    depth = len(tensors) // 3
    return tensors[: 2 * depth], tensors[2 * depth :]


def _aligned_mixing(lr: Tensor, log_momentum: Tensor | None, log_retain: Tensor | None, n: int) -> Mixing:
    """The coefficients the fused path reads, for every chunk of a chunk-aligned stretch (gates (B, H, C·n))."""

    def chunks(g: Tensor | None) -> Tensor | None:
        return None if g is None else g.unflatten(-1, (-1, n))

    m = chunk_mixing(lr.unflatten(-1, (-1, n)), chunks(log_momentum), chunks(log_retain))
    if m.carry is None:  # no momentum: S stays 0, so c, π and A_n are 0 too
        zeros = torch.zeros_like(m.retain)
        return Mixing(m.retain, zeros, m.grad_mix, zeros, zeros[..., 0])
    assert m.momentum_mix is not None and m.momentum_decay is not None
    return Mixing(m.retain, m.carry, m.grad_mix, m.momentum_mix[..., -1, :], m.momentum_decay[..., -1])


def memory_recurrence_fused(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    lr: Tensor,
    log_momentum: Tensor | None,
    log_retain: Tensor | None,
    state: RecurrentState,
    chunk_size: int,
    backend: Backend = "torch",
    checkpoint_every: int = 8,
    precision: Precision = "ieee",
    anchor: list[Tensor] | None = None,
) -> tuple[Tensor, RecurrentState]:
    """The same function as :func:`memory_recurrence_chunked`; whole chunks through ``_FusedChunks``.

    ``checkpoint_every``: the forward keeps the state of every such chunk for the backward (1 = every chunk,
    no recomputation). ``precision`` of the Triton matrix products: ``"ieee"`` (exact fp32) or ``"tf32"``.
    ``anchor``: M_0 (one (H, d_in, d_out) tensor per layer), the weights the forget gate decays towards
    (decision 9); both backends take it.
    """
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    length, n = queries.shape[2], chunk_size
    head = min(length, (n - state.offset) % n)
    body = (length - head) // n * n
    if anchor is not None and log_retain is None:
        anchor = None  # no forgetting: nothing decays towards the anchor
    if body == 0:
        return memory_recurrence_chunked(queries, keys, values, lr, log_momentum, log_retain, state, n, anchor=anchor)

    def part(t: Tensor | None, lo: int, hi: int) -> Tensor | None:
        return None if t is None else t[:, :, lo:hi]

    def chunked(lo: int, hi: int, state: RecurrentState) -> tuple[Tensor, RecurrentState]:
        q, k, v, rate = (t[:, :, lo:hi] for t in (queries, keys, values, lr))
        gates = part(log_momentum, lo, hi), part(log_retain, lo, hi)
        return memory_recurrence_chunked(q, k, v, rate, *gates, state, n, anchor=anchor)

    outputs = []
    if head:
        out, state = chunked(0, head, state)
        outputs.append(out)
    lo, hi = head, head + body
    mix = _aligned_mixing(lr[:, :, lo:hi], part(log_momentum, lo, hi), part(log_retain, lo, hi), n)
    momentum = state.momentum if state.momentum is not None else tuple(torch.zeros_like(w) for w in state.weights)
    config = (backend, n, checkpoint_every, precision, anchor is not None)
    q, k, v = (t[:, :, lo:hi].contiguous() for t in (queries, keys, values))
    anchors = anchor or []
    mixing = (m.contiguous() for m in mix)
    y, *final = _FusedChunks.apply(config, q, k, v, *mixing, *state.weights, *momentum, *anchors)
    depth = len(state.weights)
    weights = tuple(final[:depth])
    surprise = tuple(final[depth:]) if state.momentum is not None else None
    state = RecurrentState(weights, surprise, weights, 0)
    outputs.append(y)
    if hi < length:
        out, state = chunked(hi, length, state)
        outputs.append(out)
    return torch.cat(outputs, dim=2), state
