"""Parameter counts and a printable summary of a model.

Convention: every parameter is counted once — the input embedding and the (untied) output head included; a
tied head is the embedding and adds nothing. The neural memory's learned initial weights M_0, its gates
and convolutions, and the persistent tokens are parameters like any other. "non-embedding" leaves out the
embedding and the head.
"""

from __future__ import annotations

from collections import Counter

from torch import nn

# (substring of the parameter name, group); the first match wins.
_GROUPS = (
    ("embed.", "embedding"),
    ("lm_head.", "output head"),
    ("persistent_tokens", "persistent tokens"),
    (".memory.", "neural memory"),
    (".attn.", "attention"),
    (".mlp.", "mlp"),
    ("norm", "norms"),
)


def count_parameters(model: nn.Module, *, trainable_only: bool = False, embeddings: bool = True) -> int:
    """Number of distinct parameters (shared ones once); ``embeddings=False`` leaves out embedding and head."""
    total = 0
    for name, param in model.named_parameters():
        if trainable_only and not param.requires_grad:
            continue
        if not embeddings and _group(name) in ("embedding", "output head"):
            continue
        total += param.numel()
    return total


def parameter_breakdown(model: nn.Module) -> dict[str, int]:
    """Parameters per group (embedding, output head, attention, neural memory, mlp, persistent, norms)."""
    counts: Counter[str] = Counter()
    for name, param in model.named_parameters():
        counts[_group(name)] += param.numel()
    return dict(counts)


def parameter_summary(model: nn.Module) -> str:
    """A few lines: the configuration's headline, the total and each group's share."""
    total = count_parameters(model)
    lines = []
    config = getattr(model, "config", None)
    if config is not None:
        lines.append(
            f"{type(model).__name__} variant={config.variant} depth={config.depth} dim={config.dim} "
            f"heads={config.heads} vocab={config.vocab_size} mlp_hidden={config.hidden_dim}"
        )
    lines.append(
        f"parameters: {total:,} ({_human(total)}); non-embedding {_human(count_parameters(model, embeddings=False))}"
    )
    for group, count in sorted(parameter_breakdown(model).items(), key=lambda kv: -kv[1]):
        lines.append(f"  {group:<18} {count:>14,}  {100 * count / max(total, 1):5.1f}%")
    return "\n".join(lines)


def _group(name: str) -> str:
    for key, group in _GROUPS:
        if key in name:
            return group
    return "other"


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


__all__ = ["count_parameters", "parameter_breakdown", "parameter_summary"]
