"""``TitansLM``: a causal language model of any variant (MAC, MAG, MAL, LMM, Transformer++, SWA), with
state continuation across calls and token-by-token generation that carries the memory."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from titans.layers.neural_memory import NeuralMemory
from titans.layers.norm import RMSNorm
from titans.models.attention import PersistentKV
from titans.models.blocks import Block, BlockState, build_block
from titans.models.config import TitansConfig

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TitansState:
    """Everything needed to continue a sequence: one :class:`BlockState` per block, the number of tokens
    read so far, the batch size and the fingerprint of the configuration that made it."""

    layers: tuple[BlockState, ...]
    position: int
    batch_size: int
    fingerprint: str

    def detach(self) -> TitansState:
        """The same state cut from the autograd graph (for truncated backpropagation through time)."""
        return TitansState(tuple(s.detach() for s in self.layers), self.position, self.batch_size, self.fingerprint)


@dataclass
class TitansOutput:
    """``logits`` (B, T, vocab) — (B, 1, vocab) with ``last_logits_only`` —, ``loss`` (mean cross-entropy
    over the labels ≠ -100, or None) and the ``state`` after the last token."""

    logits: Tensor
    loss: Tensor | None
    state: TitansState


@dataclass
class Generation:
    """``sequences``: prompt and new tokens (B, T + n); ``state``: after all of them (continue from it)."""

    sequences: Tensor
    state: TitansState
    prompt_length: int

    @property
    def new_tokens(self) -> Tensor:
        return self.sequences[:, self.prompt_length :]


class TitansLM(nn.Module):
    """Token embedding → ``depth`` blocks (:func:`~titans.models.blocks.build_block`) → RMSNorm → LM head.

    ``model(input_ids, state=None, labels=None)``: ``input_ids`` (B, T) integer ids in [0, vocab_size);
    ``labels`` (B, T) are the targets *of each position* (already shifted: labels[:, t] is the token after
    input_ids[:, t]; -100 = ignored), so a sequence split over several calls gives the same losses.
    ``state=None`` starts new sequences; the returned state continues them exactly, wherever the split.
    """

    def __init__(self, config: TitansConfig):
        super().__init__()
        self.config = config.validate()
        self.fingerprint = config.fingerprint()
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList([build_block(config, layer) for layer in range(config.depth)])
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=config.init_std)
        nn.init.normal_(self.lm_head.weight, std=config.init_std)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    # ------------------------------------------------------------------------------------------------
    def initial_state(self, batch: int) -> TitansState:
        """The state before the first token of ``batch`` new sequences (memories primed with P)."""
        layers = tuple(block.initial_state(batch) for block in self._blocks())
        return TitansState(layers, 0, batch, self.fingerprint)

    def persistent_prefixes(self) -> list[PersistentKV | None]:
        """Per block, the attention keys/values of its persistent tokens (they depend on parameters only)."""
        return [block.prefix() for block in self._blocks()]

    def forward(
        self,
        input_ids: Tensor,
        state: TitansState | None = None,
        labels: Tensor | None = None,
        *,
        last_logits_only: bool = False,
    ) -> TitansOutput:
        self._check_input_ids(input_ids)
        self._check_state(state, input_ids.shape[0])
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(
                f"labels must have the shape of input_ids {tuple(input_ids.shape)}; got {tuple(labels.shape)}"
            )
        hidden, state = self._run(input_ids, state, self.persistent_prefixes())
        logits = self.lm_head(self.norm(hidden[:, -1:] if last_logits_only else hidden))
        loss = None if labels is None else language_model_loss(logits, labels)
        return TitansOutput(logits, loss, state)

    def _run(
        self, input_ids: Tensor, state: TitansState | None, prefixes: list[PersistentKV | None]
    ) -> tuple[Tensor, TitansState]:
        """The blocks over ``input_ids``: the final hidden states (before the norm) and the new state."""
        if state is None:
            state = self.initial_state(input_ids.shape[0])
        x = self.embed(input_ids)
        layers = []
        for block, block_state, prefix in zip(self._blocks(), state.layers, prefixes):
            x, new_state = block(x, block_state, state.position, prefix)
            layers.append(new_state)
        position = state.position + input_ids.shape[1]
        return x, TitansState(tuple(layers), position, state.batch_size, self.fingerprint)

    def _blocks(self) -> list[Block]:
        return list(self.blocks)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        state: TitansState | None = None,
        generator: torch.Generator | None = None,
    ) -> Generation:
        """Read the prompt (one parallel call), then decode token by token (greedy when temperature == 0).

        Titans variants decode with bounded memory: attention caches never exceed the window (SWA, MAG, MAL)
        or two segments' worth (MAC: S and h of the current segment), plus the persistent tokens; the
        neural memory is a fixed-size state. The returned state includes every returned token.
        """
        _check_sampling(max_new_tokens, temperature, top_k, top_p)
        self._check_input_ids(input_ids)
        self._check_state(state, input_ids.shape[0])
        prefixes = self.persistent_prefixes()  # once, not per token
        hidden, state = self._run(input_ids, state, prefixes)
        tokens = [input_ids]
        for _ in range(max_new_tokens):
            logits = self.lm_head(self.norm(hidden[:, -1]))
            token = sample_next_token(logits, temperature, top_k, top_p, generator).unsqueeze(1)
            tokens.append(token)
            hidden, state = self._run(token, state, prefixes)
        return Generation(torch.cat(tokens, dim=1), state, input_ids.shape[1])

    @contextlib.contextmanager
    def input_checks_off(self) -> Iterator[None]:
        """Skip the data-dependent input checks (token ids in range, finite memory inputs: a host sync each)
        while tracing or capturing a CUDA graph, where a sync is not allowed; the shape and dtype checks stay."""
        memories = [m for m in self.modules() if isinstance(m, NeuralMemory)]
        saved = self.config.check_inputs, [m.check_inputs for m in memories]
        self.config.check_inputs = False
        for m in memories:
            m.check_inputs = False
        try:
            yield
        finally:
            self.config.check_inputs = saved[0]
            for m, value in zip(memories, saved[1], strict=True):
                m.check_inputs = value

    # ------------------------------------------------------------------------------------------------
    def _check_input_ids(self, input_ids: Tensor) -> None:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a (batch, time) tensor; got shape {shape}")
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must hold integer token ids; got dtype {input_ids.dtype}")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must not be empty; got shape {tuple(input_ids.shape)}")
        if not self.config.check_inputs:
            return
        vocab = self.config.vocab_size
        bad = (input_ids < 0) | (input_ids >= vocab)
        if bool(bad.any()):
            token = int(input_ids[bad][0])
            raise ValueError(f"token id {token} is out of range for vocab_size {vocab} (ids must be in [0, {vocab}))")

    def _check_state(self, state: TitansState | None, batch: int) -> None:
        if state is None:
            return
        if not isinstance(state, TitansState):
            raise TypeError(f"state must be a TitansState (or None); got {type(state).__name__}")
        if state.fingerprint != self.fingerprint:
            raise ValueError(
                f"state comes from a different configuration (fingerprint {state.fingerprint}, this model "
                f"{self.fingerprint})"
            )
        if state.batch_size != batch:
            raise ValueError(f"state has batch size {state.batch_size}, input_ids has {batch}")

    def summary(self) -> str:
        from titans.models.summary import parameter_summary

        return parameter_summary(self)


def summed_token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """The sum over counted labels (≠ -100) of the cross-entropy; half-precision logits are taken in fp32."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    labels = labels.to(device=logits.device, dtype=torch.long)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


def language_model_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the labels ≠ -100 (0, still attached to the graph, when there are none).

    Summed, then divided by the count of labels: no host synchronisation (a CUDA graph can capture it)."""
    count = (labels != IGNORE_INDEX).sum().to(logits.device).clamp(min=1)
    return summed_token_loss(logits, labels) / count


def sample_next_token(
    logits: Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token per row of ``logits`` (B, vocab): argmax when temperature == 0, else sampled from
    softmax(logits / temperature) restricted to the ``top_k`` most likely tokens and the nucleus ``top_p``."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        outside = probs.cumsum(dim=-1) - probs > top_p  # the most likely token always stays
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(outside, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0; got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0; got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None; got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None; got {top_p}")


__all__ = [
    "Generation",
    "TitansLM",
    "TitansOutput",
    "TitansState",
    "language_model_loss",
    "sample_next_token",
    "summed_token_loss",
]
