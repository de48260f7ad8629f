"""``TitansConfig``: every option of a Titans language model, validated in one place."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

VARIANTS = ("mac", "mag", "mal", "lmm", "transformer", "swa")
"""The paper's four architectures (MAC eqs. 21–25, MAG eqs. 26–28, MAL eqs. 29–31, LMM alone) and two
baselines: ``transformer`` (Transformer++, full causal attention) and ``swa`` (sliding-window attention)."""

MEMORY_VARIANTS = ("mac", "mag", "mal", "lmm")
WINDOW_VARIANTS = ("mag", "mal", "swa")
IMPLS = ("auto", "fused", "chunked", "reference")
DECAY_TARGETS = ("zero", "initial")  # NeuralMemory's decay_target
MAX_MEMORY_DEPTH = 4

# Options that change how a state is computed but not what it means: left out of the fingerprint.
EXECUTION_FIELDS = frozenset(
    {"impl", "check_inputs", "init_std", "memory_checkpoint_chunks", "memory_compile_chunk_step"}
)


@dataclass
class TitansConfig:
    """Architecture of a :class:`~titans.models.lm.TitansLM`. Call :meth:`validate` (the model does).

    Ablations of the paper's Table 5 are plain options: linear memory = ``memory_depth=1``, no convolution =
    ``conv=False``, no momentum = ``momentum=False``, no weight decay = ``decay=False``, no persistent
    memory = ``persistent_tokens=0`` (see :data:`titans.models.presets.ABLATIONS`).
    """

    vocab_size: int = 256
    dim: int = 256
    depth: int = 4
    heads: int = 4
    variant: str = "mac"
    # SwiGLU MLP: hidden width ``mlp_hidden``, or ``mlp_expansion · dim`` rounded to a multiple of 8.
    mlp_expansion: float = 8 / 3
    mlp_hidden: int | None = None
    # Neural memory (titans.layers.NeuralMemory).
    memory_heads: int | None = None  # None: ``heads``
    memory_head_dim: int | None = None  # None: dim // memory_heads
    memory_depth: int = 2  # 1 = linear memory (ablation)
    memory_expansion: int = 4
    chunk_size: int = 16  # b of eq. 16
    momentum: bool = True  # eq. 14; False: η = 0 (ablation)
    decay: bool = True  # eq. 13; False: α = 0 (ablation)
    decay_target: str = (
        "initial"  # what the forget gate decays towards: M_0 ("initial", decision 9) or 0 ("zero", eq. 13)
    )
    conv: bool = True  # depthwise causal conv after q/k/v (ablation: False)
    conv_kernel: int = 4
    max_lr: float = 1.0  # θ_max of decision 1 (a linear memory wants ≤ 1/chunk_size: presets.LINEAR_MEMORY_MAX_LR)
    impl: str = "auto"  # NeuralMemory's: "auto" (Triton on CUDA, else chunked), "fused", "chunked", "reference"
    memory_checkpoint_chunks: int = 0  # NeuralMemory's checkpoint_chunks: keep the state every G chunks for backward
    memory_compile_chunk_step: bool = False  # NeuralMemory's compile_chunk_step: torch.compile the chunked path's step
    memory_layers: tuple[int, ...] | None = None  # blocks with a memory (MAC/MAG/MAL); None: every block
    # Attention.
    window: int = 512  # sliding window (MAG, MAL, SWA): a query sees itself and window − 1 earlier tokens
    segment_len: int = 128  # MAC segment length; must be a multiple of chunk_size
    persistent_tokens: int = 16  # N_p learned persistent tokens per block (eq. 19); 0 = ablation
    rope_theta: float = 10000.0
    # Everything else.
    tie_embeddings: bool = False
    norm_eps: float = 1e-6
    init_std: float = 0.02
    check_inputs: bool = True  # check token ids and memory inputs (costs a host sync per call)

    def __post_init__(self) -> None:
        if isinstance(self.memory_layers, list):
            self.memory_layers = tuple(self.memory_layers)

    # ------------------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def n_memory_heads(self) -> int:
        return self.memory_heads if self.memory_heads is not None else self.heads

    @property
    def hidden_dim(self) -> int:
        """Width of the SwiGLU MLP."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return max(8, 8 * round(self.mlp_expansion * self.dim / 8))

    @property
    def has_memory(self) -> bool:
        return self.variant in MEMORY_VARIANTS

    def layer_has_memory(self, layer: int) -> bool:
        if not self.has_memory:
            return False
        return self.memory_layers is None or layer in self.memory_layers

    # ------------------------------------------------------------------------------------------------
    def validate(self) -> TitansConfig:
        """Raise ``ValueError`` naming the first bad field; return ``self`` when everything fits."""
        if self.variant not in VARIANTS:
            raise ValueError(f"TitansConfig.variant: unknown variant {self.variant!r}; choose one of {VARIANTS}")
        for name in ("vocab_size", "dim", "depth", "heads", "memory_depth", "memory_expansion", "chunk_size"):
            _require(name, getattr(self, name) >= 1, "must be >= 1")
        _require("heads", self.dim % self.heads == 0, f"{self.heads} does not divide dim={self.dim}")
        _require("heads", self.head_dim % 2 == 0, f"head_dim = dim/heads = {self.head_dim} must be even (RoPE)")
        _require("memory_depth", self.memory_depth <= MAX_MEMORY_DEPTH, f"must be <= {MAX_MEMORY_DEPTH}")
        self._validate_memory()
        self._validate_attention()
        _require("mlp_hidden", self.mlp_hidden is None or self.mlp_hidden >= 1, "must be >= 1")
        _require("mlp_expansion", self.mlp_expansion > 0, "must be > 0")
        _require("norm_eps", self.norm_eps > 0, "must be > 0")
        return self

    def _validate_memory(self) -> None:
        _require("memory_heads", self.n_memory_heads >= 1, "must be >= 1")
        if self.memory_head_dim is None:
            _require(
                "memory_heads",
                self.dim % self.n_memory_heads == 0,
                f"{self.n_memory_heads} does not divide dim={self.dim}; set memory_head_dim",
            )
        else:
            _require("memory_head_dim", self.memory_head_dim >= 1, "must be >= 1")
        _require("conv_kernel", self.conv_kernel >= 1, "must be >= 1")
        _require("max_lr", self.max_lr > 0, "must be > 0")
        _require(
            "decay_target", self.decay_target in DECAY_TARGETS, f"unknown {self.decay_target!r}; one of {DECAY_TARGETS}"
        )
        _require("impl", self.impl in IMPLS, f"unknown implementation {self.impl!r}; choose one of {IMPLS}")
        _require("memory_checkpoint_chunks", self.memory_checkpoint_chunks >= 0, "must be >= 0 (0: the default)")
        if self.memory_layers is None:
            return
        _require("memory_layers", self.variant in ("mac", "mag", "mal"), f"is not an option of {self.variant!r}")
        layers = self.memory_layers
        _require(
            "memory_layers",
            all(isinstance(i, int) and 0 <= i < self.depth for i in layers),
            f"{layers} must be block indices in [0, {self.depth})",
        )
        _require("memory_layers", len(set(layers)) == len(layers), f"{layers} has duplicates")

    def _validate_attention(self) -> None:
        _require("persistent_tokens", self.persistent_tokens >= 0, "must be >= 0")
        _require("rope_theta", self.rope_theta > 0, "must be > 0")
        if self.variant in WINDOW_VARIANTS:
            _require("window", self.window >= 1, f"must be >= 1 for variant {self.variant!r}")
        if self.variant == "mac":
            _require("segment_len", self.segment_len >= 1, "must be >= 1")
            _require(
                "segment_len",
                self.segment_len % self.chunk_size == 0,
                f"{self.segment_len} must be a multiple of chunk_size={self.chunk_size} (memory chunks align "
                "with segments)",
            )

    # ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["memory_layers"] is not None:
            out["memory_layers"] = list(out["memory_layers"])
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TitansConfig:
        """Build from a mapping (e.g. YAML); unknown keys raise ``ValueError`` naming them."""
        unknown = sorted(set(values) - config_fields())
        if unknown:
            raise ValueError(f"TitansConfig: unknown option(s) {unknown}; known: {sorted(config_fields())}")
        return cls(**values)

    def fingerprint(self) -> str:
        """A short hash of everything that shapes the model and its state (not ``impl``/``check_inputs``)."""
        items = {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}
        return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]


def config_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(TitansConfig)}


def _require(name: str, ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"TitansConfig.{name}: {message}")


__all__ = ["MEMORY_VARIANTS", "VARIANTS", "TitansConfig", "config_fields"]
