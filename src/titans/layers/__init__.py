"""Neural-network layers (``nn.Module``s) built on :mod:`titans.ops`."""

from titans.layers.conv import CausalDepthwiseConv
from titans.layers.neural_memory import NeuralMemory, NeuralMemoryState
from titans.layers.norm import RMSNorm

__all__ = ["CausalDepthwiseConv", "NeuralMemory", "NeuralMemoryState", "RMSNorm"]
