"""Titans language models: MAC, MAG, MAL, LMM and the Transformer++ / SWA baselines (``TitansLM``)."""

from titans.models.config import MEMORY_VARIANTS, VARIANTS, TitansConfig
from titans.models.lm import Generation, TitansLM, TitansOutput, TitansState, sample_next_token
from titans.models.presets import ABLATIONS, PAPER_PRESETS, nominal_parameters, preset, preset_names
from titans.models.state_io import load_state, save_state
from titans.models.summary import count_parameters, parameter_breakdown, parameter_summary

__all__ = [
    "ABLATIONS",
    "MEMORY_VARIANTS",
    "PAPER_PRESETS",
    "VARIANTS",
    "Generation",
    "TitansConfig",
    "TitansLM",
    "TitansOutput",
    "TitansState",
    "count_parameters",
    "load_state",
    "nominal_parameters",
    "parameter_breakdown",
    "parameter_summary",
    "preset",
    "preset_names",
    "sample_next_token",
    "save_state",
]
