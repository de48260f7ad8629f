"""``NeuralMemory``: the Titans long-term memory as a sequence layer (LMM, TITANS.md sections 1–2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from titans.layers.conv import CausalDepthwiseConv
from titans.layers.norm import RMSNorm
from titans.ops.fused import memory_recurrence_fused, triton_unsupported_reason
from titans.ops.memory_mlp import memory_forward, memory_layer_shapes
from titans.ops.recurrence import RECURRENCES, RecurrentState, memory_recurrence_chunked

Impl = Literal["auto", "fused", "chunked", "reference"]
IMPLS = ("auto", "fused", "chunked", "reference")
DecayTarget = Literal["zero", "initial"]
DECAY_TARGETS = ("zero", "initial")
FUSED_CHECKPOINT_CHUNKS = 8  # the fused path's default: keep the state every 8 chunks for backward
# Memory depths whose Triton kernels passed the gradient tests on an H100 (not only in the interpreter): the ones
# impl="auto" selects. Depth 1 joined after tests/test_fused.py passed there (fp32 and tf32, with and without
# the anchor of decision 9).
AUTO_TRITON_DEPTHS = (1, 2)


@dataclass(frozen=True)
class NeuralMemoryState:
    """Everything a :class:`NeuralMemory` needs to continue a sequence: the recurrence's state, the causal
    convolution caches and a fingerprint of the configuration that made it."""

    recurrent: RecurrentState
    conv: tuple[Tensor, Tensor, Tensor] | None  # q, k, v caches, each (B, K−1, heads·head_dim)
    fingerprint: tuple[int | bool, ...]

    @property
    def batch_size(self) -> int:
        return int(self.recurrent.weights[0].shape[0])

    def detach(self) -> NeuralMemoryState:
        conv = None if self.conv is None else (self.conv[0].detach(), self.conv[1].detach(), self.conv[2].detach())
        return NeuralMemoryState(self.recurrent.detach(), conv, self.fingerprint)


class NeuralMemory(nn.Module):
    """Neural long-term memory (Titans LMM): a per-head MLP trained at test time while it reads.

    ``y, state = mem(x, state=None)`` with x of shape (batch, time, dim). The returned state continues the
    sequence exactly, whatever the split points. Pipeline per token (TITANS.md section 1):

    q, k, v = x W_Q, x W_K, x W_V (eq. 11) → causal depthwise conv (kernel 4) → SiLU → ℓ2-norm of q, k;
    gates θ_t = θ_max·sigmoid(·), η_t = sigmoid(·), α_t = sigmoid(·) per token and head (decision 1);
    the recurrence (eqs. 8–18) from the learned M_0 (decision 2); y_t = M_t(q_t) (eq. 15, decision 4);
    output RMSNorm, a sigmoid gate from x, and the output projection.

    ``max_lr`` is θ_max. A chunk takes all its gradient steps at the chunk-start weights, so its summed step is
    Σ θ_t ‖k_t‖² over the chunk; a deep memory's output LayerNorm bounds the error that step multiplies, a linear
    memory's does not: keep θ_max ≤ 1/chunk_size for ``depth=1`` (at 1 the `small` LMM overflowed to NaN).

    Ablations (paper Table 5): ``depth=1`` (linear memory), ``conv=False``, ``momentum=False`` (η = 0),
    ``decay=False`` (α = 0). ``decay_target``: what the forget gate decays the weights towards — ``"initial"``
    (default, decision 9): M_t = (1 − α_t) M_{t−1} + α_t M_0 + S_t; ``"zero"``: eq. 13 as written, which lets
    the LayerNorm-fed last layer of a deep memory shrink until training diverges (docs/benchmarks.md).

    ``impl`` — four implementations of one function: ``"reference"`` (token by token, autograd inner
    gradients), ``"chunked"`` (closed form per chunk, autograd backward), ``"fused"`` (whole chunks with a
    hand-written backward: the Triton kernels where they apply, else their PyTorch twin) and ``"auto"`` (the
    Triton kernels on CUDA when they apply, else ``"chunked"``). ``checkpoint_chunks=G``: keep the state every
    G chunks for the backward (fused: default 8).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 4,
        head_dim: int | None = None,
        depth: int = 2,
        expansion: int = 4,
        chunk_size: int = 16,
        momentum: bool = True,
        decay: bool = True,
        decay_target: DecayTarget = "initial",
        conv: bool = True,
        conv_kernel: int = 4,
        max_lr: float = 1.0,
        impl: Impl = "auto",
        check_inputs: bool = True,
        compile_chunk_step: bool = False,
        checkpoint_chunks: int = 0,
    ):
        super().__init__()
        if heads < 1:
            raise ValueError(f"NeuralMemory: heads must be >= 1, got {heads}")
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"NeuralMemory: dim={dim} is not divisible by heads={heads}; pass head_dim explicitly")
            head_dim = dim // heads
        if chunk_size < 1:
            raise ValueError(f"NeuralMemory: chunk_size must be >= 1, got {chunk_size}")
        if impl not in IMPLS:
            raise ValueError(f"NeuralMemory: impl must be one of {IMPLS}, got {impl!r}")
        if decay_target not in DECAY_TARGETS:
            raise ValueError(f"NeuralMemory: decay_target must be one of {DECAY_TARGETS}, got {decay_target!r}")
        if depth < 1 or expansion < 1:
            raise ValueError(f"NeuralMemory: depth and expansion must be >= 1, got {depth}, {expansion}")
        self.dim, self.heads, self.head_dim = dim, heads, head_dim
        self.depth, self.expansion, self.chunk_size = depth, expansion, chunk_size
        self.momentum, self.decay, self.max_lr = momentum, decay, max_lr
        self.decay_target: str = decay_target
        self.impl: str = impl
        self.check_inputs = check_inputs
        self.compile_chunk_step = compile_chunk_step
        self.checkpoint_chunks = checkpoint_chunks
        inner = heads * head_dim

        self.to_queries = nn.Linear(dim, inner, bias=False)  # W_Q (eq. 15)
        self.to_keys = nn.Linear(dim, inner, bias=False)  # W_K (eq. 11)
        self.to_values = nn.Linear(dim, inner, bias=False)  # W_V (eq. 11)
        self.convs = nn.ModuleList([CausalDepthwiseConv(inner, conv_kernel) for _ in range(3)]) if conv else None
        # Data-dependent gates per token and head (decision 1): θ (learning rate), η (momentum), α (forget).
        self.to_lr = nn.Linear(dim, heads)
        self.to_momentum = nn.Linear(dim, heads) if momentum else None
        self.to_forget = nn.Linear(dim, heads) if decay else None
        # M_0: learned initial memory weights, one MLP per head, shared over the batch (decision 2).
        self.initial_weights = nn.ParameterList(
            [
                nn.Parameter(torch.empty(heads, d_in, d_out))
                for d_in, d_out in memory_layer_shapes(head_dim, depth, expansion)
            ]
        )
        self.output_norm = RMSNorm(inner, group_size=head_dim)
        self.to_output_gate = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """M_0 and gate initialisation (TITANS.md decision 7 in docs/equations.md).

        The last layer of a deep memory starts at std 1, not 1/sqrt(fan-in): its output feeds the LayerNorm of
        M(x) = x + LN(·), whose backward scales with 1/std, and a pre-activation of std ~0.05 turned every inner
        gradient into an amplifier (outer gradient norms of 1e6–1e11 at init, then NaN). The forget gate starts
        at α = sigmoid(−6) ≈ 0.0025 so that the decay does not shrink W_L back towards that regime.

        For the same reason the hidden → hidden layers of a memory deeper than 2 start at std 2/sqrt(fan-in):
        GELU halves small inputs, so at 1/sqrt(fan-in) every extra layer halved the pre-LN std and doubled the
        first layers' inner gradients (the first chunk's step overshot 5–8× at depth 4; docs/results.md). The
        first layer (unit-norm keys in) and depth 1–2 keep 1/sqrt(fan-in).
        """
        for layer, w in enumerate(self.initial_weights):
            last_of_deep = self.depth > 1 and layer == self.depth - 1
            hidden_to_hidden = 0 < layer < self.depth - 1
            std = 1.0 if last_of_deep else (2.0 if hidden_to_hidden else 1.0) * w.shape[-2] ** -0.5
            nn.init.normal_(w, std=std)
        for gate, bias in ((self.to_lr, -2.0), (self.to_momentum, 2.0), (self.to_forget, -6.0)):
            if gate is not None:
                nn.init.normal_(gate.weight, std=0.02)
                nn.init.constant_(gate.bias, bias)

    # ------------------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> tuple[int | bool, ...]:
        return (
            self.heads,
            self.head_dim,
            self.depth,
            self.expansion,
            self.chunk_size,
            self.momentum,
            self.convs is not None,
        )

    def initial_state(
        self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> NeuralMemoryState:
        """The state before the first token: M_0, S_0 = 0, empty convolution caches."""
        dtype = dtype or _inner_dtype(self.initial_weights[0].dtype)
        weights = [w.to(device=device, dtype=dtype) for w in self.initial_weights]
        recurrent = RecurrentState.initial(weights, batch, self.momentum)
        conv = None
        if self.convs is not None:
            ref = weights[0].new_zeros(())
            q_cache, k_cache, v_cache = (c.empty_cache(batch, ref) for c in self._conv_modules())
            conv = (q_cache, k_cache, v_cache)
        return NeuralMemoryState(recurrent, conv, self.fingerprint)

    def _conv_modules(self) -> list[CausalDepthwiseConv]:
        assert self.convs is not None
        return [c for c in self.convs if isinstance(c, CausalDepthwiseConv)]

    def _check(self, x: Tensor, state: NeuralMemoryState | None) -> None:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"NeuralMemory expects x of shape (batch, time, dim={self.dim}); got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"NeuralMemory expects a floating-point x; got dtype {x.dtype}")
        if self.check_inputs and not bool(torch.isfinite(x).all()):
            raise ValueError("NeuralMemory: x contains NaN or Inf")
        if state is None:
            return
        if not isinstance(state, NeuralMemoryState):
            raise TypeError(f"NeuralMemory: state must be a NeuralMemoryState, got {type(state).__name__}")
        if state.fingerprint != self.fingerprint:
            raise ValueError(
                "NeuralMemory: the state comes from a different configuration "
                f"(heads, head_dim, depth, expansion, chunk_size, momentum, conv) = {state.fingerprint}, "
                f"this layer is {self.fingerprint}"
            )
        if state.batch_size != x.shape[0]:
            raise ValueError(f"NeuralMemory: state has batch size {state.batch_size}, x has {x.shape[0]}")

    def _heads(self, t: Tensor) -> Tensor:
        """(B, T, H·d) → (B, H, T, d)."""
        return t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def _project(self, x: Tensor, which: int, cache: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Projection (eq. 11 / 15), causal conv, SiLU for q (0), k (1) or v (2)."""
        linear = (self.to_queries, self.to_keys, self.to_values)[which]
        h = linear(x)
        new_cache = None
        if self.convs is not None:
            h, new_cache = self._conv_modules()[which](h, cache)
        return F.silu(h), new_cache

    def _gates(self, x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """θ_t, log η_t, log(1 − α_t), each (B, H, T), in the inner dtype (decision 1, decision 5)."""

        x = x.to(dtype)

        def logits(linear: nn.Linear) -> Tensor:
            return F.linear(x, linear.weight.to(dtype), linear.bias.to(dtype)).transpose(1, 2)

        lr = self.max_lr * torch.sigmoid(logits(self.to_lr))
        log_momentum = None if self.to_momentum is None else F.logsigmoid(logits(self.to_momentum))
        log_retain = None if self.to_forget is None else F.logsigmoid(-logits(self.to_forget))
        return lr, log_momentum, log_retain

    def _finish(self, x: Tensor, retrieved: Tensor) -> Tensor:
        """Output RMSNorm, sigmoid gate from x, output projection."""
        y = retrieved.transpose(1, 2).flatten(2)
        y = self.output_norm(y).to(x.dtype)  # the recurrence ran in fp32/fp64; back to the layer's dtype
        return self.to_out(y * torch.sigmoid(self.to_output_gate(x)))

    # ------------------------------------------------------------------------------------------------
    def forward(self, x: Tensor, state: NeuralMemoryState | None = None) -> tuple[Tensor, NeuralMemoryState]:
        """Write x into the memory and read it back token by token: (batch, time, dim) → same shape."""
        self._check(x, state)
        if state is None:
            state = self.initial_state(x.shape[0], x.device, _inner_dtype(x.dtype))
        caches = state.conv if state.conv is not None else (None, None, None)
        projected = [self._project(x, i, caches[i]) for i in range(3)]
        caches_out = [c for _, c in projected if c is not None]
        new_conv = None if self.convs is None else (caches_out[0], caches_out[1], caches_out[2])
        inner = _inner_dtype(x.dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, k, v = (self._heads(p.to(inner)) for p, _ in projected)
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
            lr, log_momentum, log_retain = self._gates(x, inner)
            args = (q, k, v, lr, log_momentum, log_retain, state.recurrent, self.chunk_size)
            anchor = self._anchor(inner)
            impl, backend = self._dispatch(q)
            if impl == "fused":
                reduced = projected[0][0].dtype in (torch.bfloat16, torch.float16)  # autocast: tf32 products
                retrieved, recurrent = memory_recurrence_fused(
                    *args,
                    backend=backend,
                    checkpoint_every=self.checkpoint_chunks or FUSED_CHECKPOINT_CHUNKS,
                    precision="tf32" if reduced else "ieee",
                    anchor=anchor,
                )
            elif impl == "chunked":
                retrieved, recurrent = memory_recurrence_chunked(
                    *args,
                    compile_step=self.compile_chunk_step,
                    checkpoint_chunks=self.checkpoint_chunks,
                    anchor=anchor,
                )
            else:
                retrieved, recurrent = RECURRENCES[impl](*args, anchor=anchor)
        return self._finish(x, retrieved), NeuralMemoryState(recurrent, new_conv, self.fingerprint)

    def _anchor(self, dtype: torch.dtype) -> list[Tensor] | None:
        """M_0 in the inner dtype when the forget gate decays towards it (decision 9), else None."""
        if self.decay_target == "zero" or self.to_forget is None:
            return None
        return [w.to(dtype) for w in self.initial_weights]

    def _dispatch(self, q: Tensor) -> tuple[str, Literal["triton", "torch"]]:
        """(implementation, fused backend) for inner-dtype queries ``q`` of shape (B, H, T, d)."""
        if self.impl not in ("auto", "fused"):
            return self.impl, "torch"
        reason = triton_unsupported_reason(self.depth, self.head_dim, self.head_dim * self.expansion, q.dtype, q.device)
        if self.impl == "fused" and reason is None:
            return "fused", "triton"
        if reason is None and q.is_cuda and self.depth in AUTO_TRITON_DEPTHS:  # never the Triton interpreter
            return "fused", "triton"
        return ("fused", "torch") if self.impl == "fused" else ("chunked", "torch")

    def step(self, x: Tensor, state: NeuralMemoryState | None = None) -> tuple[Tensor, NeuralMemoryState]:
        """One token (batch, dim) for decoding: the same function as :meth:`forward` on a length-1 sequence."""
        if x.dim() != 2:
            raise ValueError(f"NeuralMemory.step expects x of shape (batch, dim={self.dim}); got {tuple(x.shape)}")
        y, state = self(x.unsqueeze(1), state)
        return y.squeeze(1), state

    def retrieve(
        self, x: Tensor, state: NeuralMemoryState, query_conv: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Read without writing (eq. 15, M*): y_t = M(q_t) with the weights of ``state`` for every t.

        Used by MAC (eq. 21). ``query_conv`` is the convolution cache of this query stream (separate from the
        write stream's); the new one is returned.
        """
        self._check(x, state)
        q, new_cache = self._project(x, 0, query_conv)
        inner = _inner_dtype(x.dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q = F.normalize(self._heads(q.to(inner)), dim=-1)
            retrieved = memory_forward([w.to(inner) for w in state.recurrent.weights], q)
        return self._finish(x, retrieved), new_cache


def _inner_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64 (tests); everything else runs the inner recurrence in fp32 (decision 5)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


__all__ = ["NeuralMemory", "NeuralMemoryState"]
