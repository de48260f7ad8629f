"""Which arithmetic a run uses: bf16 autocast on CUDA (``precision: auto``) or plain fp32.

The neural memory keeps its inner weights, momentum and gate products in fp32 under autocast (project
decision 5), and the loss is always taken in fp32.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from titans.training.config import Precision


def uses_bf16(precision: Precision, device: torch.device) -> bool:
    """True when the forward passes run under bf16 autocast."""
    if precision == "bf16":
        return True
    return precision == "auto" and device.type == "cuda"


def autocast(precision: Precision, device: torch.device, cache: bool = True) -> AbstractContextManager[object]:
    """The autocast context for forward passes (a no-op in fp32). ``cache=False`` recasts a weight at every use
    (a CUDA graph capture cannot keep autocast's cache of casts)."""
    if not uses_bf16(precision, device):
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)
