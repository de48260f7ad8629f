"""``MemoryAugmentedLM``: a Titans neural memory added to an existing Hugging Face causal LM (Llama, Qwen2,
GPT-2, ...), which then reads a long document segment by segment and carries what it learned from one segment
to the next in the memory alone (the base model sees only the current segment).

Two ways to connect the memory (``mode``):

* ``"gate"`` (MAG-style, eqs. 26–28): at decoder layer ``layer`` the hidden states h of the segment go through the
  memory, which writes them and reads back per token (y_t = M_t(q_t), decision 4), and the layer output becomes
  h + g ⊙ y with a learned per-channel gate g (initialised at ``gate_init``; 0 = the model starts as the base).
* ``"context"`` (MAC-style, eqs. 21–24): before segment s, ``memory_tokens`` tokens are read from the memory
  M_{s−1} with learned queries and prepended to the segment's input embeddings, and every token's embedding
  gets g ⊙ M*_{s−1}(e_t) added (a read without write, causal since M_{s−1} holds earlier segments only); after the
  segment the hidden states of decoder layer ``layer`` are written into the memory (M_s = M_{s−1}(h)).

The memory reads RMS-normalised inputs (``write_norm``, ``read_norm``), as inside a Titans block. Either way
the memory weights really change while reading (they are the state), the base model can stay frozen
(``freeze_base``) and the memory's own parameters (projections, gates, M_0, output, norms) are trained with
the LM loss or by distillation (:mod:`titans.hf.distill`).

``gate_init = 0`` keeps a pretrained base model's outputs unchanged at the start (the gate then has to grow
before the memory gets gradients); on the small random models of the tests, ``gate_init = 1`` learns recall in
a few dozen steps where 0 needs many more.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from titans.layers.neural_memory import NeuralMemory, NeuralMemoryState
from titans.layers.norm import RMSNorm
from titans.models.lm import IGNORE_INDEX

Mode = Literal["gate", "context"]
CONFIG_FILE = "memory_config.json"
WEIGHTS_FILE = "memory.safetensors"
BASE_DIR = "base"


@dataclass
class MemoryAugmentConfig:
    """How the memory is built and connected (see the module docstring)."""

    mode: Mode = "gate"
    segment_len: int = 64  # tokens the base model sees at once
    layer: int | None = (
        None  # gate: the decoder layer gated (default: the middle); context: the layer written (default: last)
    )
    memory_tokens: int = 4  # context mode: tokens read from the memory and prepended per segment
    memory_heads: int = 2
    memory_head_dim: int | None = None  # default: hidden_size // memory_heads
    memory_depth: int = 2
    memory_expansion: int = 2
    chunk_size: int = 16
    max_lr: float = 1.0
    momentum: bool = True
    decay: bool = True
    decay_target: str = "initial"  # NeuralMemory's: forget towards M_0 (decision 9) or "zero" (eq. 13)
    conv: bool = True
    gate_init: float = 0.0
    freeze_base: bool = True

    def validate(self) -> MemoryAugmentConfig:
        if self.mode not in ("gate", "context"):
            raise ValueError(f"MemoryAugmentConfig.mode must be 'gate' or 'context'; got {self.mode!r}")
        for name in ("segment_len", "memory_heads", "memory_depth", "memory_expansion", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"MemoryAugmentConfig.{name} must be >= 1; got {getattr(self, name)}")
        if self.memory_tokens < 0:
            raise ValueError(f"MemoryAugmentConfig.memory_tokens must be >= 0; got {self.memory_tokens}")
        return self


@dataclass(frozen=True)
class AugmentedState:
    """What carries over between segments: the memory's state (M, S, conv caches), the convolution cache of
    the read stream (context mode) and the number of tokens read."""

    memory: NeuralMemoryState
    read_conv: Tensor | None
    position: int

    def detach(self) -> AugmentedState:
        conv = None if self.read_conv is None else self.read_conv.detach()
        return AugmentedState(self.memory.detach(), conv, self.position)


@dataclass
class AugmentedOutput:
    """``logits`` (B, T, vocab) of the whole input, ``loss`` (HF convention: labels unshifted) and ``state``."""

    logits: Tensor
    loss: Tensor | None
    state: AugmentedState


def decoder_layers(base: PreTrainedModel) -> nn.ModuleList:
    """The list of decoder layers of ``base`` (the ModuleList with ``num_hidden_layers`` entries)."""
    count = base.config.get_text_config().num_hidden_layers
    for module in base.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"cannot find the {count} decoder layers of {type(base).__name__}")


class MemoryAugmentedLM(nn.Module):
    """``base`` (a Hugging Face causal LM) with a Titans :class:`NeuralMemory` read segment by segment.

    ``out = model(input_ids, labels=None, state=None)``: reads ``input_ids`` (B, T) in segments of
    ``segment_len``, returns the logits of every token, the loss (if ``labels``) and the state after the last
    token (pass it back to continue the document).
    """

    def __init__(self, base: PreTrainedModel, config: MemoryAugmentConfig | None = None):
        super().__init__()
        self.config = (config or MemoryAugmentConfig()).validate()
        self.base = base
        self.layers = decoder_layers(base)
        hidden = int(base.config.get_text_config().hidden_size)
        default_layer = len(self.layers) // 2 if self.config.mode == "gate" else len(self.layers)
        self.layer = self.config.layer if self.config.layer is not None else default_layer
        self._check_layer()
        self.memory = self._make_memory(hidden)
        eps = float(getattr(base.config.get_text_config(), "rms_norm_eps", 1e-6) or 1e-6)
        self.write_norm = RMSNorm(hidden, eps)  # the memory reads normalised inputs, as in a Titans block
        self.read_norm = RMSNorm(hidden, eps) if self.config.mode == "context" else None
        self.gate = nn.Parameter(torch.full((hidden,), float(self.config.gate_init)))
        tokens = self.config.memory_tokens if self.config.mode == "context" else 0
        self.memory_queries = nn.Parameter(torch.randn(tokens, hidden) * 0.02) if tokens else None
        self._segment: dict[str, Any] | None = None
        if self.config.mode == "gate":
            self.layers[self.layer].register_forward_hook(self._gate_hook)
        if self.config.freeze_base:
            self.base.requires_grad_(False)

    def _check_layer(self) -> None:
        top = len(self.layers) - 1 if self.config.mode == "gate" else len(self.layers)
        if not 0 <= self.layer <= top:
            raise ValueError(
                f"MemoryAugmentConfig.layer must be in [0, {top}] for mode {self.config.mode!r}; got {self.layer}"
            )

    def _make_memory(self, hidden: int) -> NeuralMemory:
        c = self.config
        return NeuralMemory(
            hidden,
            heads=c.memory_heads,
            head_dim=c.memory_head_dim,
            depth=c.memory_depth,
            expansion=c.memory_expansion,
            chunk_size=c.chunk_size,
            momentum=c.momentum,
            decay=c.decay,
            decay_target=c.decay_target,  # type: ignore[arg-type]
            conv=c.conv,
            max_lr=c.max_lr,
        )

    # ------------------------------------------------------------------------------------------------
    def initial_state(self, batch: int) -> AugmentedState:
        """The state before a document: the learned M_0, zero momentum, empty caches."""
        device = self.gate.device
        return AugmentedState(self.memory.initial_state(batch, device), None, 0)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that train (all but the base model's when it is frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def forward(
        self, input_ids: Tensor, labels: Tensor | None = None, state: AugmentedState | None = None
    ) -> AugmentedOutput:
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be a non-empty (batch, time) tensor; got shape {tuple(input_ids.shape)}")
        state = state if state is not None else self.initial_state(input_ids.shape[0])
        logits = []
        for start in range(0, input_ids.shape[1], self.config.segment_len):
            segment = input_ids[:, start : start + self.config.segment_len]
            segment_logits, state = self.read_segment(segment, state)
            logits.append(segment_logits)
        all_logits = torch.cat(logits, dim=1)
        return AugmentedOutput(all_logits, None if labels is None else shifted_loss(all_logits, labels), state)

    def read_segment(self, segment: Tensor, state: AugmentedState) -> tuple[Tensor, AugmentedState]:
        """One segment (B, ≤ segment_len) through the base model with the memory: logits and the new state."""
        if self.config.mode == "gate":
            return self._gate_segment(segment, state)
        return self._context_segment(segment, state)

    # ------------------------------------------------------------------------------------------------ gate
    def _gate_segment(self, segment: Tensor, state: AugmentedState) -> tuple[Tensor, AugmentedState]:
        with self._hooked(memory=state.memory) as box:
            logits = self.base(input_ids=segment, use_cache=False).logits
        new_memory = cast(NeuralMemoryState, box["memory"])
        return logits, AugmentedState(new_memory, None, state.position + segment.shape[1])

    @contextmanager
    def _hooked(self, **values: Any) -> Iterator[dict[str, Any]]:
        self._segment = dict(values)
        try:
            yield self._segment
        finally:
            self._segment = None

    def _gate_hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        """Layer output h → h + g ⊙ M(h), writing h into the memory (only inside :meth:`_gate_segment`)."""
        if self._segment is None:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        remembered, self._segment["memory"] = self.memory(self.write_norm(hidden), self._segment["memory"])
        gated = hidden + self.gate.to(hidden.dtype) * remembered.to(hidden.dtype)
        return (gated, *output[1:]) if isinstance(output, tuple) else gated

    # ------------------------------------------------------------------------------------------------ context
    def _context_segment(self, segment: Tensor, state: AugmentedState) -> tuple[Tensor, AugmentedState]:
        embeds = self.base.get_input_embeddings()(segment)
        assert self.read_norm is not None
        read, read_conv = self.memory.retrieve(self.read_norm(embeds), state.memory, state.read_conv)  # eq. 21
        embeds = embeds + self.gate.to(embeds.dtype) * read.to(embeds.dtype)
        prefix = self._memory_tokens(state.memory, embeds)
        inputs = embeds if prefix is None else torch.cat([prefix, embeds], dim=1)
        out = self.base(inputs_embeds=inputs, use_cache=False, output_hidden_states=True)
        skip = 0 if prefix is None else prefix.shape[1]
        written = out.hidden_states[self.layer][:, skip:]
        _, memory = self.memory(self.write_norm(written), state.memory)  # M_s = M_{s−1}(h), eq. 24
        return out.logits[:, skip:], AugmentedState(memory, read_conv, state.position + segment.shape[1])

    def _memory_tokens(self, memory: NeuralMemoryState, like: Tensor) -> Tensor | None:
        if self.memory_queries is None:
            return None
        queries = self.memory_queries.to(like.dtype).unsqueeze(0).expand(like.shape[0], -1, -1)
        tokens, _ = self.memory.retrieve(queries, memory)  # learned queries, no norm needed
        return tokens.to(like.dtype)

    # ------------------------------------------------------------------------------------------------ files
    def memory_state_dict(self) -> dict[str, Tensor]:
        """The parameters added to the base model (memory, gate, memory queries)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("base.")}

    def save_pretrained(self, directory: str | Path, save_base: bool = True) -> Path:
        """``memory_config.json`` + ``memory.safetensors`` (+ the base model in ``base/``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.memory_state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_FILE))
        config = {"memory": dataclasses.asdict(self.config), "layer": self.layer}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        if save_base:
            self.base.save_pretrained(str(directory / BASE_DIR))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, base: PreTrainedModel | None = None) -> MemoryAugmentedLM:
        """A model saved by :meth:`save_pretrained` (``base``: use this base model instead of ``base/``)."""
        directory = Path(directory)
        stored = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        config = MemoryAugmentConfig(**{**stored["memory"], "layer": stored["layer"]})
        base = base if base is not None else AutoModelForCausalLM.from_pretrained(str(directory / BASE_DIR))
        model = cls(base, config)
        missing, unexpected = model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=False)
        missing = [k for k in missing if not k.startswith("base.")]
        if missing or unexpected:
            raise ValueError(f"{directory / WEIGHTS_FILE} does not fit (missing {missing}, unexpected {unexpected})")
        return model


def is_augmented_dir(path: str | Path) -> bool:
    """True for a folder written by :meth:`MemoryAugmentedLM.save_pretrained`."""
    return (Path(path) / CONFIG_FILE).is_file()


def shifted_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of ``labels[:, t + 1]`` from the logits at t (HF convention), labels ≠ -100."""
    targets = labels[:, 1:].reshape(-1).to(torch.long)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets, ignore_index=IGNORE_INDEX)


__all__ = [
    "AugmentedOutput",
    "AugmentedState",
    "MemoryAugmentConfig",
    "MemoryAugmentedLM",
    "decoder_layers",
    "is_augmented_dir",
    "shifted_loss",
]
