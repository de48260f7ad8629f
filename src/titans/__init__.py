"""titans: the Titans neural long-term memory (Behrouz, Zhong, Mirrokni, arXiv 2501.00663), exact and fast."""

from titans.layers.neural_memory import NeuralMemory, NeuralMemoryState
from titans.models import TitansConfig as TitansConfig
from titans.models import TitansLM as TitansLM
from titans.ops.recurrence import RecurrentState

__version__ = "0.1.0"

__all__ = ["NeuralMemory", "NeuralMemoryState", "RecurrentState", "__version__"]
