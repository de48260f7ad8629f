"""The needle-position model: a :class:`~titans.models.TitansLM` backbone (any variant) with a position head.

``model(input_ids, attention_mask)`` returns one logit per position, (B, T), with padded positions set to
the lowest finite value by :func:`~titans.tasks.needle.mask_padding_logits`; training is cross-entropy over
positions against the needle index, prediction is the argmax.

Two heads (``kind``):

* ``"local"`` — a linear score of each position's own final hidden state. On the titan-min task this is
  easy: the needle token is visible at its own position, so no memory is needed.
* ``"final"`` — the answer is read from the hidden state of the **last real token** only: a query
  ``q = W h_last`` scored against sinusoidal encodings of the positions 0..T-1 (a pointer, so every length
  works and each position need not be seen in training). With a causal model this is the meaningful
  version: the last token must point back to where the needle was, so in the "hard" setting (sequences
  longer than the attention window / MAC segment) only the neural memory can carry the needle there. The
  backbone then gets absolute sinusoidal positions added to its token embeddings (``positions=True``), so
  the needle's hidden state knows where it is and the memory can store that.

Padding (the bug behind the seed project's 0.321): batches are right-padded and the backbone is causal, so a
real position never sees padding; the local head masks padded positions, and the final head reads the last
*real* token (index ``length - 1``), then masks positions ``>= length``. Neither can pick a padded position.

The backbone is run through ``TitansLM``'s public parts (``embed``, ``blocks``, ``norm``,
``initial_state``, ``persistent_prefixes``), since ``TitansLM.forward`` returns logits, not hidden states;
``lm_head`` is left unused. Long sequences can be read in pieces (``piece_len``) with the state carried
from piece to piece, which gives the same result as one call.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from titans.models import TitansConfig, TitansLM
from titans.tasks.needle import mask_padding_logits
from titans.tasks.run_config import HeadKind

HEAD_KINDS: tuple[str, ...] = ("local", "final")


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> Tensor:
    """(length, dim) float32 encodings: sin/cos pairs at geometric frequencies (the Transformer's)."""
    positions = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    half = (dim + 1) // 2
    frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32, device=device) / half)
    angles = positions * frequencies
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :dim]


class NeedlePositionModel(nn.Module):
    """A Titans backbone and a position head (see the module docstring).

    Args:
        config: the backbone's configuration (``vocab_size`` must cover the task's ids).
        head: ``"local"`` or ``"final"``.
        positions: add (projected) sinusoidal absolute positions to the token embeddings.
    """

    def __init__(self, config: TitansConfig, head: HeadKind = "local", positions: bool = False):
        super().__init__()
        if head not in HEAD_KINDS:
            raise ValueError(f"unknown position head {head!r}; choose one of {HEAD_KINDS}")
        self.head_kind: str = head
        self.backbone = TitansLM(config)
        dim = config.dim
        self.position_proj: nn.Linear | None = None
        if positions:
            self.position_proj = nn.Linear(dim, dim, bias=False)
            nn.init.normal_(self.position_proj.weight, std=config.init_std)
        self.head = nn.Linear(dim, 1) if head == "local" else nn.Linear(dim, dim, bias=False)
        nn.init.normal_(self.head.weight, std=config.init_std)

    @property
    def config(self) -> TitansConfig:
        """The backbone's configuration."""
        return self.backbone.config

    # ------------------------------------------------------------------------------------------------
    def hidden_states(self, input_ids: Tensor, piece_len: int | None = None) -> Tensor:
        """Final hidden states after the backbone's norm, (B, T, dim); read in pieces of ``piece_len``."""
        batch, length = input_ids.shape
        piece = length if piece_len is None else max(1, piece_len)
        layers: list[Any] = list(self.backbone.initial_state(batch).layers)
        prefixes = self.backbone.persistent_prefixes()
        outputs = []
        for start in range(0, length, piece):
            x = self._embed(input_ids[:, start : start + piece], start)
            for index, (block, prefix) in enumerate(zip(self.backbone.blocks, prefixes)):
                x, layers[index] = block(x, layers[index], start, prefix)
            outputs.append(x)
        hidden = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        return self.backbone.norm(hidden)

    def _embed(self, input_ids: Tensor, start: int) -> Tensor:
        x = self.backbone.embed(input_ids)
        if self.position_proj is not None:
            encodings = sinusoidal_positions(start + input_ids.shape[1], x.shape[-1], x.device)[start:]
            x = x + self.position_proj(encodings.to(x.dtype))
        return x

    def forward(self, input_ids: Tensor, attention_mask: Tensor, piece_len: int | None = None) -> Tensor:
        """Position logits (B, T), padded positions masked (never the argmax, zero probability)."""
        hidden = self.hidden_states(input_ids, piece_len)
        if self.head_kind == "local":
            logits = self.head(hidden).squeeze(-1)
        else:
            logits = self._pointer_logits(hidden, attention_mask)
        return mask_padding_logits(logits.float(), attention_mask)

    def _pointer_logits(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """Scores of every position from the last real token's hidden state: (W h_last) · pe_j / √dim."""
        batch, length, dim = hidden.shape
        last = attention_mask.long().sum(dim=1) - 1
        query = self.head(hidden[torch.arange(batch, device=hidden.device), last])
        keys = sinusoidal_positions(length, dim, hidden.device).to(query.dtype)
        return query @ keys.t() / math.sqrt(dim)

    @torch.no_grad()
    def predict(self, input_ids: Tensor, attention_mask: Tensor, piece_len: int | None = None) -> Tensor:
        """Predicted needle positions (B,), always inside each sequence."""
        return self(input_ids, attention_mask, piece_len).argmax(dim=-1)

    def check_input_ids(self, input_ids: Tensor) -> None:
        """Raise ``ValueError`` if an id is outside the backbone's vocabulary."""
        vocab = self.config.vocab_size
        if bool(((input_ids < 0) | (input_ids >= vocab)).any()):
            raise ValueError(f"token ids must be in [0, {vocab}) for this model")


def exportable_copy(model: NeedlePositionModel) -> NeedlePositionModel:
    """A CPU, eval-mode copy with the host-syncing input checks switched off (they break tracing/export)."""
    clone = copy.deepcopy(model).cpu().eval()
    for module in clone.modules():
        if hasattr(module, "check_inputs"):
            setattr(module, "check_inputs", False)  # noqa: B010
    clone.backbone.config.check_inputs = False
    return clone


__all__ = ["HEAD_KINDS", "NeedlePositionModel", "exportable_copy", "sinusoidal_positions"]
