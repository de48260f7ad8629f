"""One decoding step of a :class:`~titans.models.TitansLM` as a function of fixed-size tensors, for export.

``TitansLM`` keeps Python numbers in its state (the position, the offset inside a memory chunk) and caches that
grow and shrink; an exported graph needs tensors of fixed shape instead. :class:`DecodeStep` computes the same
function as ``model(token, state)`` for one token with:

* the position and each memory's chunk offset as int64 tensors of shape (1,);
* attention caches as fixed buffers with a validity mask derived from the position: a ring of ``window − 1``
  slots for sliding-window attention (SWA, MAG, MAL), ``segment_len`` slots for MAC's segment (S and the
  retrieved h), and ``max_cache_len`` slots for the Transformer++ baseline;
* the chunk boundary of the memory recurrence (eq. 16) as a ``where`` on the offset.

:func:`flatten_state` turns a ``TitansState`` into these tensors (so a prompt can be read by the PyTorch model
and continued by the exported graph); ``DecodeStep(model)(token, *tensors)`` returns the logits of the next
token and the new tensors in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from titans.layers.neural_memory import NeuralMemory, NeuralMemoryState
from titans.models import TitansLM, TitansState
from titans.models.attention import Attention, KVCache, PersistentKV
from titans.models.blocks import AttentionBlock, Block, BlockState, LMMBlock, MACBlock, MAGBlock, MALBlock
from titans.ops.memory_mlp import memory_forward, per_token_inner_grads
from titans.ops.recurrence import RecurrentState

State = dict[str, Tensor]


# ---------------------------------------------------------------------------------------------- layout


def cache_slots(block: Block, max_cache_len: int | None) -> int:
    """Slots of the attention cache of ``block`` (0: none)."""
    if isinstance(block, MACBlock):
        return block.segment_len
    window = getattr(block, "window", None)
    if isinstance(block, AttentionBlock) and window is None:
        if max_cache_len is None:
            raise ValueError("the Transformer++ baseline caches every token: pass max_cache_len")
        return max_cache_len
    return max(int(window) - 1, 0) if window is not None else 0


def _memory_tensors(prefix: str, memory: NeuralMemoryState) -> State:
    out: State = {}
    recurrent = memory.recurrent
    for layer, w in enumerate(recurrent.weights):
        out[f"{prefix}w{layer}"] = w.contiguous().clone()
        out[f"{prefix}c{layer}"] = recurrent.chunk_start[layer].contiguous().clone()
        if recurrent.momentum is not None:
            out[f"{prefix}s{layer}"] = recurrent.momentum[layer].contiguous().clone()
    out[f"{prefix}offset"] = torch.tensor([recurrent.offset], dtype=torch.long)
    if memory.conv is not None:
        for name, cache in zip("qkv", memory.conv):
            out[f"{prefix}conv_{name}"] = cache.contiguous().clone()
    return out


def _slots(cache: KVCache | None, attn: Attention, batch: int, slots: int, positions: list[int], like: Tensor) -> State:
    """Keys/values buffers (B, H, slots, d) holding ``cache``'s tokens at the slots ``positions``."""
    keys = like.new_zeros(batch, attn.heads, slots, attn.head_dim)
    values = keys.clone()
    if cache is not None:
        for j, slot in enumerate(positions):
            keys[:, :, slot] = cache.keys[:, :, j]
            values[:, :, slot] = cache.values[:, :, j]
    return {"k": keys, "v": values}


def _cache_positions(block: Block, cache: KVCache | None, position: int, slots: int) -> list[int]:
    """The slot of each cached token (oldest first)."""
    n = 0 if cache is None else cache.length
    if isinstance(block, MACBlock) or getattr(block, "window", None) is None:
        return list(range(n))  # MAC: offsets 0..n−1 of the segment; Transformer++: positions 0..n−1
    return [(position - n + j) % slots for j in range(n)]


def flatten_state(model: TitansLM, state: TitansState, max_cache_len: int | None = None) -> State:
    """The fixed-size tensors of :class:`DecodeStep` for ``state`` (ordered: this order is the graph's)."""
    like = model.embed.weight.detach()
    out: State = {"position": torch.tensor([state.position], dtype=torch.long)}
    for i, (block, bs) in enumerate(zip(model.blocks, state.layers)):
        out.update(
            {f"b{i}.{k}": v for k, v in _block_tensors(cast(Block, block), bs, state, like, max_cache_len).items()}
        )
    return out


def _block_tensors(block: Block, bs: BlockState, state: TitansState, like: Tensor, max_cache_len: int | None) -> State:
    out: State = {}
    slots = cache_slots(block, max_cache_len) if hasattr(block, "attn") else 0
    batch = state.batch_size
    if slots:
        attn = cast(Attention, block.attn)
        where = _cache_positions(block, bs.cache, state.position, slots)
        out.update({f"kv_{k}": v for k, v in _slots(bs.cache, attn, batch, slots, where, like).items()})
        if isinstance(block, MACBlock) and block.memory is not None:
            where = _cache_positions(block, bs.context, state.position, slots)
            out.update({f"ctx_{k}": v for k, v in _slots(bs.context, attn, batch, slots, where, like).items()})
    if bs.memory is not None:
        out.update(_memory_tensors("mem.", bs.memory))
    if isinstance(block, MACBlock) and block.memory is not None:
        assert bs.segment_memory is not None
        for layer, w in enumerate(bs.segment_memory.recurrent.weights):
            out[f"seg.w{layer}"] = w.contiguous().clone()
        if block.memory.convs is not None:
            conv = block.memory._conv_modules()[0]
            cache = bs.retrieval_conv if bs.retrieval_conv is not None else conv.empty_cache(batch, like)
            out["rconv"] = cache.contiguous().clone()
    return out


# ---------------------------------------------------------------------------------------------- the step


def attend_one(q: Tensor, keys: Tensor, values: Tensor, valid: Tensor, scale: float) -> Tensor:
    """softmax(q kᵀ·scale) v for one query per head (B, H, 1, E) over the keys where ``valid`` (N,) is True."""
    scores = (q @ keys.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~valid, float("-inf"))
    return scores.softmax(dim=-1) @ values


def _write_slot(buffer: Tensor, new: Tensor, slot: Tensor) -> Tensor:
    """``buffer`` (B, H, S, d) with ``new`` (B, H, 1, d) at ``slot`` (1,) — as a ``where``, export-friendly."""
    hit = (torch.arange(buffer.shape[2], device=buffer.device) == slot).view(1, 1, -1, 1)
    return torch.where(hit, new, buffer)


class _Attn:
    """One token of an :class:`Attention` over [P ‖ cached ‖ new], with the cache as a slot buffer."""

    def __init__(self, attn: Attention, prefix: PersistentKV | None):
        self.attn, self.prefix = attn, prefix

    def query(self, u: Tensor, rope_position: Tensor) -> Tensor:
        return self.attn.queries(u, rope_position, self.prefix is not None)

    def keys_values(self, u: Tensor, rope_position: Tensor) -> tuple[Tensor, Tensor]:
        return self.attn.keys_values(u, rope_position)

    def run(self, q: Tensor, parts: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        """Attention of q over the persistent tokens and ``parts`` = [(keys, values, valid)]; → (B, 1, dim)."""
        batch = q.shape[0]
        keys = [self.attn.widen_keys(k, self.prefix) for k, _, _ in parts]
        values = [v for _, v, _ in parts]
        valid = [m for _, _, m in parts]
        if self.prefix is not None:
            keys.insert(0, self.prefix.keys.to(q.dtype).expand(batch, -1, -1, -1))
            values.insert(0, self.prefix.values.to(q.dtype).expand(batch, -1, -1, -1))
            valid.insert(0, torch.ones(self.prefix.keys.shape[2], dtype=torch.bool, device=q.device))
        out = attend_one(q, torch.cat(keys, 2), torch.cat(values, 2), torch.cat(valid), self.attn.scale)
        return self.attn.output(out)


def _memory_state(
    st: State, prefix: str, memory: NeuralMemory
) -> tuple[list[Tensor], list[Tensor] | None, list[Tensor]]:
    layers = memory.depth
    weights = [st[f"{prefix}w{i}"] for i in range(layers)]
    momentum = [st[f"{prefix}s{i}"] for i in range(layers)] if memory.momentum else None
    chunk_start = [st[f"{prefix}c{i}"] for i in range(layers)]
    return weights, momentum, chunk_start


def memory_step(memory: NeuralMemory, x: Tensor, st: State, prefix: str) -> tuple[Tensor, State]:
    """One token x (B, 1, dim) through ``memory`` (write, then read with the new weights, decision 4)."""
    weights, momentum, chunk_start = _memory_state(st, prefix, memory)
    offset = st[f"{prefix}offset"]
    caches = [st.get(f"{prefix}conv_{n}") for n in "qkv"]
    projected = [memory._project(x, i, caches[i]) for i in range(3)]
    inner = torch.float64 if x.dtype == torch.float64 else torch.float32
    q, k, v = (memory._heads(p.to(inner)) for p, _ in projected)
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    lr, log_momentum, log_retain = memory._gates(x, inner)
    start = [torch.where(offset == 0, w, c) for w, c in zip(weights, chunk_start)]  # a new chunk (eq. 16)
    grads = per_token_inner_grads(start, k, v)
    theta = lr[:, :, 0, None, None]
    anchor = memory._anchor(inner)
    new: State = {}
    for i, grad in enumerate(grads):
        step = -theta * grad[:, :, 0]
        if momentum is not None and log_momentum is not None:
            step = log_momentum[:, :, 0, None, None].exp() * momentum[i] + step  # eq. 14
            new[f"{prefix}s{i}"] = step
        if log_retain is not None:
            retain = log_retain[:, :, 0, None, None].exp()
            # eq. 13, towards M_0 when the memory's decay_target is "initial" (decision 9)
            target = 0.0 if anchor is None else (1 - retain) * anchor[i]
            weights[i] = retain * weights[i] + target + step
        else:
            weights[i] = weights[i] + step
        new[f"{prefix}w{i}"] = weights[i]
        new[f"{prefix}c{i}"] = start[i]
    new[f"{prefix}offset"] = torch.remainder(offset + 1, memory.chunk_size)
    for name, (_, cache) in zip("qkv", projected):
        if cache is not None:
            new[f"{prefix}conv_{name}"] = cache
    return memory._finish(x, memory_forward(weights, q)), new


def _sliding_parts(
    block: Block, attn: _Attn, u: Tensor, st: State, position: Tensor, slots: int
) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor]], State]:
    """Query, attention parts and new cache of a windowed/full attention block (absolute RoPE positions)."""
    q = attn.query(u, position)
    k, v = attn.keys_values(u, position)
    parts = [(k, v, torch.ones(1, dtype=torch.bool, device=u.device))]
    new: State = {}
    if slots:
        valid = torch.arange(slots, device=u.device) < position
        parts.insert(0, (st["kv_k"], st["kv_v"], valid))
        ring = position if getattr(block, "window", None) is None else torch.remainder(position, slots)
        new = {"kv_k": _write_slot(st["kv_k"], k, ring), "kv_v": _write_slot(st["kv_v"], v, ring)}
    return q, parts, new


def _attention_mix(
    block: Block, attn_module: Attention, u: Tensor, st: State, ctx: dict[str, Any]
) -> tuple[Tensor, State]:
    attn = _Attn(attn_module, ctx["prefix"])
    q, parts, new = _sliding_parts(block, attn, u, st, ctx["position"], ctx["slots"])
    return attn.run(q, parts), new


def _step_attention(block: AttentionBlock, x: Tensor, st: State, ctx: dict[str, Any]) -> tuple[Tensor, State]:
    y, new = _attention_mix(block, block.attn, block.norm(x), st, ctx)
    return x + y, new


def _step_lmm(block: LMMBlock, x: Tensor, st: State, ctx: dict[str, Any]) -> tuple[Tensor, State]:
    y, new = memory_step(block.memory, block.norm(x), st, "mem.")
    return x + y, new


def _step_mag(block: MAGBlock, x: Tensor, st: State, ctx: dict[str, Any]) -> tuple[Tensor, State]:
    u = block.norm(x)
    attended, new = _attention_mix(block, block.attn, u, st, ctx)
    remembered, new_memory = memory_step(block.memory, u, st, "mem.")
    gated = block.attn_out_norm(attended) * torch.sigmoid(block.memory_out_norm(remembered))
    return x + gated, {**new, **new_memory}


def _step_mal(block: MALBlock, x: Tensor, st: State, ctx: dict[str, Any]) -> tuple[Tensor, State]:
    remembered, new_memory = memory_step(block.memory, block.memory_norm(x), st, "mem.")
    x = x + remembered
    attended, new = _attention_mix(block, block.attn, block.attn_norm(x), st, ctx)
    return x + attended, {**new, **new_memory}


def _step_mac(block: MACBlock, x: Tensor, st: State, ctx: dict[str, Any]) -> tuple[Tensor, State]:
    u = block.norm(x)
    attn = _Attn(block.attn, ctx["prefix"])
    offset = torch.remainder(ctx["position"], block.segment_len)  # segment-local RoPE and slots
    valid = torch.arange(block.segment_len, device=x.device) < offset
    now = torch.ones(1, dtype=torch.bool, device=x.device)
    q = attn.query(u, offset)
    k, v = attn.keys_values(u, offset)
    parts = [(st["kv_k"], st["kv_v"], valid), (k, v, now)]
    new: State = {"kv_k": _write_slot(st["kv_k"], k, offset), "kv_v": _write_slot(st["kv_v"], v, offset)}
    memory = block.memory
    if memory is not None:
        retrieved, rconv = _mac_retrieve(memory, u, st)
        hk, hv = attn.keys_values(retrieved, offset)
        parts = [(st["ctx_k"], st["ctx_v"], valid), (hk, hv, now), *parts]
        new.update({"ctx_k": _write_slot(st["ctx_k"], hk, offset), "ctx_v": _write_slot(st["ctx_v"], hv, offset)})
        if rconv is not None:
            new["rconv"] = rconv
    y = attn.run(q, parts)
    if memory is None or block.gate_norm is None:
        return x + y, new
    remembered, new_memory = memory_step(memory, y, st, "mem.")
    ends = offset == block.segment_len - 1
    for i in range(memory.depth):  # the next segment reads the memory after this one (eq. 21)
        new[f"seg.w{i}"] = torch.where(ends, new_memory[f"mem.w{i}"], st[f"seg.w{i}"])
    return x + y * torch.sigmoid(block.gate_norm(remembered)), {**new, **new_memory}


def _mac_retrieve(memory: NeuralMemory, u: Tensor, st: State) -> tuple[Tensor, Tensor | None]:
    """eq. 21: h = M*_{s−1}(q) with the weights of the segment start (no write)."""
    weights = tuple(st[f"seg.w{i}"] for i in range(memory.depth))
    state = NeuralMemoryState(RecurrentState(weights, None, weights, 0), None, memory.fingerprint)
    return memory.retrieve(u, state, st.get("rconv"))


_STEPS: dict[type, Callable[..., tuple[Tensor, State]]] = {
    AttentionBlock: _step_attention,
    LMMBlock: _step_lmm,
    MAGBlock: _step_mag,
    MALBlock: _step_mal,
    MACBlock: _step_mac,
}


class DecodeStep(nn.Module):
    """``forward(token, *state) → (logits, *new_state)``: one token (B, 1) int64 of ``model`` with the state
    tensors of :func:`flatten_state` (in :attr:`state_names` order); logits (B, vocab)."""

    def __init__(self, model: TitansLM, state_names: list[str], max_cache_len: int | None = None):
        super().__init__()
        self.model = model
        self.state_names = list(state_names)
        self.max_cache_len = max_cache_len

    def forward(self, token: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        flat = dict(zip(self.state_names, state))
        position = flat["position"]
        x = self.model.embed(token)
        new: State = {"position": position + 1}
        for i, block in enumerate(self.model.blocks):
            block = cast(Block, block)
            mine = {k[len(f"b{i}.") :]: v for k, v in flat.items() if k.startswith(f"b{i}.")}
            slots = cache_slots(block, self.max_cache_len) if hasattr(block, "attn") else 0
            ctx = {"position": position, "prefix": block.prefix(), "slots": slots}
            x, changed = _STEPS[type(block)](block, x, mine, ctx)
            x = x + block.mlp(block.mlp_norm(x))
            new.update({f"b{i}.{k}": changed.get(k, v) for k, v in mine.items()})
        logits = self.model.lm_head(self.model.norm(x))[:, -1]
        return (logits, *(new[name] for name in self.state_names))

    def step(self, token: Tensor, state: State) -> tuple[Tensor, State]:
        """The same as ``forward`` with named tensors."""
        logits, *tensors = self(token, *(state[name] for name in self.state_names))
        return logits, dict(zip(self.state_names, tensors))


def decode_step_for(model: TitansLM, batch_size: int = 1, max_cache_len: int | None = None) -> tuple[DecodeStep, State]:
    """A :class:`DecodeStep` of ``model`` and the tensors of its initial state for ``batch_size`` sequences."""
    with torch.no_grad():
        state = flatten_state(model, model.initial_state(batch_size), max_cache_len)
    return DecodeStep(model, list(state), max_cache_len).eval(), state


__all__ = ["DecodeStep", "attend_one", "cache_slots", "decode_step_for", "flatten_state", "memory_step"]
