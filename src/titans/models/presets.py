"""Configuration presets: the paper's four sizes (TITANS.md section 3) and two small ones.

``preset(name, variant, ablations=(), **overrides)``:

* ``"170M"``, ``"340M"``, ``"760M"``, ``"1.3B"`` — blocks / dim / heads of the paper, vocabulary 32000
  (Llama-2 tokenizer), chunk 16, MAC segment 512, window 2048, 128 persistent tokens, memory depth 2 with
  expansion 4, conv kernel 4, a memory in every block, tied input/output embeddings. The paper compares
  models of equal size and gives no MLP width, so the SwiGLU width is solved per variant (and per ablation /
  override) to bring the total parameter count (:func:`~titans.models.summary.count_parameters`, embedding
  included, counted once when tied) to the nominal size. Tying keeps the widths sensible: untied, the
  hybrids at 340M would be left a 384-wide MLP; tied, Transformer++ at 340M gets the usual ≈ 8/3·dim.
* ``"small"`` — byte vocabulary (256), 6 × 384, ~16M parameters (matched the same way), for short GPU runs.
* ``"tiny"`` — byte vocabulary, 2 × 32, for CPU tests.

The baselines (``transformer``, ``swa``) get no persistent tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from titans.models.config import TitansConfig, config_fields

if TYPE_CHECKING:
    from titans.models.lm import TitansLM

_PAPER_COMMON: dict[str, Any] = dict(
    vocab_size=32000, chunk_size=16, segment_len=512, window=2048, persistent_tokens=128,
    memory_depth=2, memory_expansion=4, conv_kernel=4, tie_embeddings=True,
)  # fmt: skip

# name: (options, nominal parameter count or None)
_PRESETS: dict[str, tuple[dict[str, Any], int | None]] = {
    "tiny": (
        dict(vocab_size=256, dim=32, depth=2, heads=2, memory_expansion=2, chunk_size=4, segment_len=8,
             window=8, persistent_tokens=2, mlp_hidden=64),
        None,
    ),
    "small": (
        dict(vocab_size=256, dim=384, depth=6, heads=6, chunk_size=16, segment_len=128, window=256,
             persistent_tokens=16),
        16_000_000,
    ),
    "170M": ({**_PAPER_COMMON, "depth": 12, "dim": 768, "heads": 16}, 170_000_000),
    "340M": ({**_PAPER_COMMON, "depth": 24, "dim": 1024, "heads": 16}, 340_000_000),
    "760M": ({**_PAPER_COMMON, "depth": 24, "dim": 1536, "heads": 16}, 760_000_000),
    "1.3B": ({**_PAPER_COMMON, "depth": 18, "dim": 2048, "heads": 8}, 1_300_000_000),
}  # fmt: skip

PAPER_PRESETS = ("170M", "340M", "760M", "1.3B")

# A linear memory has no output LayerNorm to bound its error, so the chunk's summed inner step Σ θ_t ‖k_t‖² must
# stay small itself: at θ_max = 1 and chunks of 16 similar keys it overshoots and grows until it overflows (the
# `small` LMM went NaN at step 4 on every implementation, docs/results.md). θ_max = 1/16 keeps it ≤ 1 there.
LINEAR_MEMORY_MAX_LR = 1 / 16

ABLATIONS: dict[str, dict[str, Any]] = {
    "linear_memory": {"memory_depth": 1, "max_lr": LINEAR_MEMORY_MAX_LR},
    "no_conv": {"conv": False},
    "no_momentum": {"momentum": False},
    "no_weight_decay": {"decay": False},
    "no_persistent_memory": {"persistent_tokens": 0},
}
"""The paper's Table 5 ablations as configuration overrides."""

MLP_MULTIPLE = 64


def preset_names() -> list[str]:
    return list(_PRESETS)


def nominal_parameters(name: str) -> int | None:
    """The nominal size of a preset (None for ``tiny``)."""
    return _PRESETS[_canonical(name)][1]


def preset(name: str, variant: str = "mac", *, ablations: Iterable[str] = (), **overrides: Any) -> TitansConfig:
    """A validated configuration; ``ablations`` are names of :data:`ABLATIONS`, ``overrides`` any fields."""
    options, target = _PRESETS[_canonical(name)]
    values: dict[str, Any] = {**options, "variant": variant}
    if variant in ("transformer", "swa"):
        values["persistent_tokens"] = 0
    for ablation in ablations:
        if ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation {ablation!r}; choose from {sorted(ABLATIONS)}")
        values.update(ABLATIONS[ablation])
    unknown = sorted(set(overrides) - config_fields())
    if unknown:
        raise ValueError(f"preset {name!r}: unknown option(s) {unknown}")
    values.update(overrides)
    config = TitansConfig(**values).validate()
    if target is not None and "mlp_hidden" not in overrides and "mlp_expansion" not in overrides:
        config.mlp_hidden = matched_mlp_hidden(config, target)
    return config


def matched_mlp_hidden(config: TitansConfig, target: int, multiple_of: int = MLP_MULTIPLE) -> int:
    """The SwiGLU width (a multiple of ``multiple_of``) that brings the model closest to ``target`` parameters.

    The count is linear in the width (3·dim parameters per unit per block), so one model built on the
    ``meta`` device (no memory allocated) gives it.
    """
    from titans.models.summary import count_parameters

    base = count_parameters(meta_model(TitansConfig(**{**config.to_dict(), "mlp_hidden": multiple_of})))
    per_unit = 3 * config.dim * config.depth
    units = round((target - base) / (per_unit * multiple_of))
    return multiple_of * max(1, 1 + units)


def meta_model(config: TitansConfig) -> TitansLM:
    """The model on the ``meta`` device: shapes only, no memory, built in well under a second (for counting).

    ``torch.nn.init.normal_`` on a meta tensor costs seconds the first time in a process (it loads torch's
    reference decompositions), so meta tensors skip it here; other devices are initialised as usual.
    """
    from titans.models.lm import TitansLM

    original = nn.init.normal_

    def normal_unless_meta(tensor: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return tensor if tensor.device.type == "meta" else original(tensor, *args, **kwargs)

    nn.init.normal_ = normal_unless_meta
    try:
        with torch.device("meta"):
            return TitansLM(config)
    finally:
        nn.init.normal_ = original


def _canonical(name: str) -> str:
    for key in _PRESETS:
        if key.lower() == name.lower():
            return key
    raise ValueError(f"unknown preset {name!r}; choose from {list(_PRESETS)}")


__all__ = [
    "ABLATIONS",
    "PAPER_PRESETS",
    "matched_mlp_hidden",
    "meta_model",
    "nominal_parameters",
    "preset",
    "preset_names",
]
