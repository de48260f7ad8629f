"""The blocks of the Titans language models: Llama-style pre-norm residual blocks (RMSNorm, SwiGLU MLP)
whose token mixer is attention, the neural memory, or one of the paper's three combinations.

=============  ====================================================================================
variant        token mixer of one block (u = RMSNorm(x); every block adds a SwiGLU MLP after it)
=============  ====================================================================================
transformer    x + Attn(u), full causal (Transformer++)
swa            x + SWA(u), sliding window
lmm            x + M(u): the neural memory alone
mac            per segment S (eqs. 21–25): h = M*_{s−1}(S); y = Attn([P ‖ h ‖ S]); M_s = M_{s−1}(y);
               x + y ⊙ σ(RMSNorm(M*(y)))   (decision 6)
mag            x + RMSNorm(SWA*([P ‖ u])) ⊙ σ(RMSNorm(M([P ‖ u])))   (eqs. 26–28, decision 7)
mal            x' = x + M([P ‖ RMSNorm(x)]); x' + SWA*(RMSNorm(x'))   (eqs. 29–31)
=============  ====================================================================================

Persistent memory (eq. 19): each block owns N_p learned tokens P (in the residual space, normalised by the
same RMSNorm as the input they are prepended to). In attention they are keys/values visible to every
query (SWA* / MAC). On the memory side of M([P ‖ x]) (MAG, MAL, LMM) the memory *reads P first*: the
initial state of every sequence is the memory after writing P (their outputs are dropped). P is
input-independent, so this is a learned initial state; it keeps causality and exact state chaining. MAC's
memory writes the attention output y (eq. 24), so P only enters its attention.

Memory placement: by default every block of MAC/MAG/MAL/LMM has its own memory (the paper describes one
memory per block); ``memory_layers`` restricts MAC/MAG/MAL to some blocks, the others being the variant's
attention alone (segment attention with P for MAC, SWA* for MAG/MAL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from titans.layers.neural_memory import NeuralMemory, NeuralMemoryState
from titans.layers.norm import RMSNorm
from titans.models.attention import Attention, KVCache, PersistentKV, extend, segment_attention
from titans.models.config import TitansConfig
from titans.ops.recurrence import chunk_spans


@dataclass(frozen=True)
class BlockState:
    """What one block carries from one call to the next (all bounded except the Transformer++ cache).

    ``memory``: the neural memory's running state (MAC: M_t after writing y_{≤t}; MAG/MAL/LMM: after
    [P ‖ x_{≤t}]). ``cache``: attention keys/values — SWA: the last window − 1 tokens; transformer: all;
    MAC: the current segment's tokens S. MAC only: ``segment_memory`` M_{s−1} (the state at the segment start,
    read by eq. 21), ``retrieval_conv`` (the convolution cache of the retrieval query stream) and
    ``context`` (keys/values of the current segment's retrieved tokens h).
    """

    memory: NeuralMemoryState | None = None
    cache: KVCache | None = None
    segment_memory: NeuralMemoryState | None = None
    retrieval_conv: Tensor | None = None
    context: KVCache | None = None

    def detach(self) -> BlockState:
        """The same state cut from the autograd graph (truncated backpropagation through time)."""
        return BlockState(
            None if self.memory is None else self.memory.detach(),
            None if self.cache is None else self.cache.detach(),
            None if self.segment_memory is None else self.segment_memory.detach(),
            None if self.retrieval_conv is None else self.retrieval_conv.detach(),
            None if self.context is None else self.context.detach(),
        )


class SwiGLU(nn.Module):
    """Llama MLP: W_2 (SiLU(x W_1) ⊙ x W_3)."""

    def __init__(self, dim: int, hidden: int, init_std: float, out_std: float):
        super().__init__()
        self.to_hidden = nn.Linear(dim, 2 * hidden, bias=False)  # W_1 and W_3 side by side
        self.to_out = nn.Linear(hidden, dim, bias=False)
        nn.init.normal_(self.to_hidden.weight, std=init_std)
        nn.init.normal_(self.to_out.weight, std=out_std)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.to_hidden(x).chunk(2, dim=-1)
        return self.to_out(F.silu(gate) * up)


def make_memory(config: TitansConfig) -> NeuralMemory:
    return NeuralMemory(
        config.dim,
        heads=config.n_memory_heads,
        head_dim=config.memory_head_dim,
        depth=config.memory_depth,
        expansion=config.memory_expansion,
        chunk_size=config.chunk_size,
        momentum=config.momentum,
        decay=config.decay,
        decay_target=config.decay_target,  # type: ignore[arg-type]
        conv=config.conv,
        conv_kernel=config.conv_kernel,
        max_lr=config.max_lr,
        impl=config.impl,  # type: ignore[arg-type]
        check_inputs=config.check_inputs,
        checkpoint_chunks=config.memory_checkpoint_chunks,
        compile_chunk_step=config.memory_compile_chunk_step,
    )


def _residual_std(config: TitansConfig) -> float:
    """Init std of the projections that write into the residual stream (GPT-2 style 1/√(2·depth))."""
    return config.init_std / math.sqrt(2 * config.depth)


def make_attention(config: TitansConfig) -> Attention:
    return Attention(config.dim, config.heads, config.rope_theta, config.init_std, _residual_std(config))


def expand_memory_state(state: NeuralMemoryState, batch: int) -> NeuralMemoryState:
    """A batch-1 memory state broadcast to ``batch`` sequences (views, no copies)."""

    def grow(t: Tensor) -> Tensor:
        return t.expand(batch, *t.shape[1:])

    conv = None if state.conv is None else (grow(state.conv[0]), grow(state.conv[1]), grow(state.conv[2]))
    return NeuralMemoryState(state.recurrent.map(grow), conv, state.fingerprint)


def primed_memory_state(
    memory: NeuralMemory, persistent: Tensor | None, batch: int, device: torch.device
) -> NeuralMemoryState:
    """The memory side of M([P ‖ x]) (eqs. 26, 29): the state after writing the persistent tokens
    (normalised, (N_p, dim)) into M_0, or M_0 itself without persistent tokens."""
    if persistent is None:
        return memory.initial_state(batch, device)
    _, state = memory(persistent.unsqueeze(0))
    return expand_memory_state(state, batch)


class Block(nn.Module):
    """Pre-norm residual block: ``mix`` (the variant's token mixer, with its residuals), then x + MLP(RMSNorm(x)).

    ``forward(x, state, position, prefix)``: x (B, T, dim); ``state`` this block's :class:`BlockState`;
    ``position`` the index of x's first token in the sequence; ``prefix`` what :meth:`prefix` returned
    (the attention keys/values of the persistent tokens, computed once per call).
    """

    def __init__(self, config: TitansConfig):
        super().__init__()
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = SwiGLU(config.dim, config.hidden_dim, config.init_std, _residual_std(config))
        self.persistent_tokens: nn.Parameter | None = None
        if config.persistent_tokens:
            self.persistent_tokens = nn.Parameter(torch.empty(config.persistent_tokens, config.dim))
            nn.init.normal_(self.persistent_tokens, std=config.init_std)

    def forward(
        self, x: Tensor, state: BlockState, position: int, prefix: PersistentKV | None
    ) -> tuple[Tensor, BlockState]:
        x, state = self.mix(x, state, position, prefix)
        return x + self.mlp(self.mlp_norm(x)), state

    def mix(
        self, x: Tensor, state: BlockState, position: int, prefix: PersistentKV | None
    ) -> tuple[Tensor, BlockState]:
        raise NotImplementedError

    def prefix(self) -> PersistentKV | None:
        """Keys/values of the persistent tokens for this block's attention (None without)."""
        return None

    def initial_state(self, batch: int) -> BlockState:
        """The state before a sequence's first token."""
        return BlockState()

    @property
    def device(self) -> torch.device:
        return self.mlp_norm.weight.device

    def _persistent(self, norm: RMSNorm) -> Tensor | None:
        """The persistent tokens P (eq. 19) through the norm of the sublayer they are prepended to."""
        return None if self.persistent_tokens is None else norm(self.persistent_tokens)

    def _attention_prefix(self, attn: Attention, norm: RMSNorm) -> PersistentKV | None:
        tokens = self._persistent(norm)
        return None if tokens is None else attn.persistent(tokens)


class AttentionBlock(Block):
    """Transformer++ (``window=None``) or SWA* (sliding window, persistent tokens always visible)."""

    def __init__(self, config: TitansConfig, window: int | None):
        super().__init__(config)
        self.window = window
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = make_attention(config)

    def prefix(self) -> PersistentKV | None:
        return self._attention_prefix(self.attn, self.norm)

    def mix(
        self, x: Tensor, state: BlockState, position: int, prefix: PersistentKV | None
    ) -> tuple[Tensor, BlockState]:
        y, cache = self.attn.mix(self.norm(x), state.cache, position, prefix, self.window)
        return x + y, replace(state, cache=cache)


class LMMBlock(Block):
    """The neural memory as the token mixer, in place of attention (Titans LMM)."""

    def __init__(self, config: TitansConfig):
        super().__init__(config)
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.memory = make_memory(config)

    def initial_state(self, batch: int) -> BlockState:
        return BlockState(memory=primed_memory_state(self.memory, self._persistent(self.norm), batch, self.device))

    def mix(
        self, x: Tensor, state: BlockState, position: int, prefix: PersistentKV | None
    ) -> tuple[Tensor, BlockState]:
        y, memory = self.memory(self.norm(x), state.memory)
        return x + y, replace(state, memory=memory)


class MAGBlock(Block):
    """Memory as a gate (eqs. 26–28, decision 7): o = RMSNorm₁(SWA*(x̃)) ⊙ σ(RMSNorm₂(M(x̃))), x̃ = [P ‖ u]."""

    def __init__(self, config: TitansConfig):
        super().__init__(config)
        self.window = config.window
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = make_attention(config)
        self.memory = make_memory(config)
        self.attn_out_norm = RMSNorm(config.dim, config.norm_eps)
        self.memory_out_norm = RMSNorm(config.dim, config.norm_eps)

    def prefix(self) -> PersistentKV | None:
        return self._attention_prefix(self.attn, self.norm)

    def initial_state(self, batch: int) -> BlockState:
        return BlockState(memory=primed_memory_state(self.memory, self._persistent(self.norm), batch, self.device))

    def mix(
        self, x: Tensor, state: BlockState, position: int, prefix: PersistentKV | None
    ) -> tuple[Tensor, BlockState]:
        u = self.norm(x)
        attended, cache = self.attn.mix(u, state.cache, position, prefix, self.window)  # SWA* (eq. 27)
        remembered, memory = self.memory(u, state.memory)  # M(x̃) (eq. 28)
        gated = self.attn_out_norm(attended) * torch.sigmoid(self.memory_out_norm(remembered))  # eq. 28
        return x + gated, BlockState(memory=memory, cache=cache)


class MALBlock(Block):
    """Memory as a layer (eqs. 29–31): the memory, then sliding-window attention, each a residual sublayer."""

    def __init__(self, config: TitansConfig):
        super().__init__(config)
        self.window = config.window
        self.memory_norm = RMSNorm(config.dim, config.norm_eps)
        self.memory = make_memory(config)
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = make_attention(config)

    def prefix(self) -> PersistentKV | None:
        return self._attention_prefix(self.attn, self.attn_norm)

    def initial_state(self, batch: int) -> BlockState:
        persistent = self._persistent(self.memory_norm)
        return BlockState(memory=primed_memory_state(self.memory, persistent, batch, self.device))

    def mix(
        self, x: Tensor, state: BlockState, position: int, prefix: PersistentKV | None
    ) -> tuple[Tensor, BlockState]:
        remembered, memory = self.memory(self.memory_norm(x), state.memory)  # y = M([P ‖ x]) (eq. 30)
        x = x + remembered
        attended, cache = self.attn.mix(self.attn_norm(x), state.cache, position, prefix, self.window)  # eq. 31
        return x + attended, BlockState(memory=memory, cache=cache)


class MACBlock(Block):
    """Memory as a context (eqs. 21–25, decision 6), segment by segment; without a memory (``memory_layers``)
    the block is causal attention over [P ‖ S] within each segment.

    RoPE positions are segment-local: every segment has the same geometry.
    """

    def __init__(self, config: TitansConfig, with_memory: bool):
        super().__init__(config)
        self.segment_len = config.segment_len
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = make_attention(config)
        self.memory = make_memory(config) if with_memory else None
        self.gate_norm = RMSNorm(config.dim, config.norm_eps) if with_memory else None

    def prefix(self) -> PersistentKV | None:
        return self._attention_prefix(self.attn, self.norm)

    def initial_state(self, batch: int) -> BlockState:
        if self.memory is None:
            return BlockState()
        memory = self.memory.initial_state(batch, self.device)
        return BlockState(memory=memory, segment_memory=memory)

    def mix(
        self, x: Tensor, state: BlockState, position: int, prefix: PersistentKV | None
    ) -> tuple[Tensor, BlockState]:
        u = self.norm(x)
        outputs = []
        for start, end in chunk_spans(u.shape[1], position % self.segment_len, self.segment_len):
            out, state = self._segment(u[:, start:end], state, (position + start) % self.segment_len, prefix)
            outputs.append(out)
        return x + torch.cat(outputs, dim=1), state

    def _segment(
        self, u: Tensor, state: BlockState, offset: int, prefix: PersistentKV | None
    ) -> tuple[Tensor, BlockState]:
        """Tokens ``offset`` … ``offset + T − 1`` of one segment (the earlier ones are in ``state``)."""
        positions = torch.arange(offset, offset + u.shape[1], device=u.device)
        q = self.attn.queries(u, positions, prefix is not None)
        keys, values = extend(state.cache, *self.attn.keys_values(u, positions))
        context, retrieval_conv = self._retrieve(u, state, positions)
        widened = None if context is None else (self.attn.widen_keys(context[0], prefix), context[1])
        attended = segment_attention(q, widened, self.attn.widen_keys(keys, prefix), values, prefix, self.attn.scale)
        y = self.attn.output(attended)  # eqs. 22–23
        segment_ends = offset + u.shape[1] == self.segment_len
        if self.memory is None or self.gate_norm is None:
            return y, BlockState(cache=None if segment_ends else KVCache(keys, values))
        remembered, memory = self.memory(y, state.memory)  # eq. 24 (write y); M*(y_i) per token (decision 4)
        out = y * torch.sigmoid(self.gate_norm(remembered))  # eq. 25, a normalised gate (decision 6)
        if segment_ends:
            return out, BlockState(memory=memory, segment_memory=memory, retrieval_conv=retrieval_conv)
        assert context is not None
        return out, BlockState(memory, KVCache(keys, values), state.segment_memory, retrieval_conv, KVCache(*context))

    def _retrieve(
        self, u: Tensor, state: BlockState, positions: Tensor
    ) -> tuple[tuple[Tensor, Tensor] | None, Tensor | None]:
        """Eq. 21: h_i = M*_{s−1}(q_i), read with the memory at the segment start (no write). Returns the keys and
        values of h for the segment so far (None without a memory) and the retrieval stream's conv cache."""
        if self.memory is None:
            return None, None
        assert state.segment_memory is not None
        retrieved, retrieval_conv = self.memory.retrieve(u, state.segment_memory, state.retrieval_conv)
        return extend(state.context, *self.attn.keys_values(retrieved, positions)), retrieval_conv


def build_block(config: TitansConfig, layer: int) -> Block:
    """Block ``layer`` of a model of ``config.variant``."""
    variant = config.variant
    if variant == "transformer":
        return AttentionBlock(config, window=None)
    if variant == "swa":
        return AttentionBlock(config, window=config.window)
    if variant == "lmm":
        return LMMBlock(config)
    if variant == "mac":
        return MACBlock(config, with_memory=config.layer_has_memory(layer))
    if not config.layer_has_memory(layer):
        return AttentionBlock(config, window=config.window)
    return MAGBlock(config) if variant == "mag" else MALBlock(config)


__all__ = [
    "AttentionBlock",
    "Block",
    "BlockState",
    "LMMBlock",
    "MACBlock",
    "MAGBlock",
    "MALBlock",
    "SwiGLU",
    "build_block",
    "expand_memory_state",
    "primed_memory_state",
]
