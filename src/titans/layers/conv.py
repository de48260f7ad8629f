"""Causal depthwise 1-D convolution with a streaming cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CausalDepthwiseConv(nn.Module):
    """y_t = b + Σ_{j<K} w_j ⊙ x_{t−j} per channel; ``cache`` holds the previous K−1 inputs (B, K−1, C)."""

    def __init__(self, channels: int, kernel_size: int = 4):
        super().__init__()
        self.channels = channels
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.uniform_(self.weight, -(kernel_size**-0.5), kernel_size**-0.5)

    def empty_cache(self, batch: int, like: Tensor) -> Tensor:
        return like.new_zeros(batch, self.kernel_size - 1, self.channels)

    def forward(self, x: Tensor, cache: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x: (B, T, C) → (y (B, T, C), new cache (B, K−1, C))."""
        if cache is None:
            cache = self.empty_cache(x.shape[0], x)
        padded = torch.cat([cache.to(x.dtype), x], dim=1)
        y = F.conv1d(padded.transpose(1, 2), self.weight.to(x.dtype), self.bias.to(x.dtype), groups=self.channels)
        return y.transpose(1, 2), padded[:, padded.shape[1] - (self.kernel_size - 1) :]
