"""Hugging Face integration of Titans (the optional extra ``titans[hf]``).

* :class:`TitansHFConfig`, :class:`TitansForCausalLM`, :class:`TitansCache` — a Titans model in
  ``transformers`` (``AutoModelForCausalLM``, ``save_pretrained``/``from_pretrained``, ``generate``);
* :func:`native_to_hf`, :func:`hf_to_native`, :func:`convert` — conversion from/to ``titans train`` checkpoints;
* :class:`MemoryStateFile` — a model's state after reading a document, saved to and loaded from safetensors;
* :class:`MemoryAugmentedLM` — a Titans neural memory added to an existing Hugging Face causal LM, trained with
  the LM loss or by distillation (:func:`distill`);
* :func:`export_decode_step`, :class:`OnnxDecoder` — the single-token decode step in ONNX;
* ``titans.hf.lm_eval_adapter`` — the lm-evaluation-harness model ``titans`` (imported on demand);
* :func:`add_hf_commands` — ``titans distill`` and ``titans convert``.

Names are imported on first use, so ``import titans.hf`` (and the command registration) does not load
``transformers``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TitansHFConfig": "titans.hf.configuration",
    "TitansForCausalLM": "titans.hf.modeling",
    "TitansCache": "titans.hf.modeling",
    "register": "titans.hf.modeling",
    "convert": "titans.hf.convert",
    "native_to_hf": "titans.hf.convert",
    "hf_to_native": "titans.hf.convert",
    "load_native": "titans.hf.convert",
    "MemoryStateFile": "titans.hf.state_file",
    "MemoryStateError": "titans.hf.state_file",
    "MemoryAugmentedLM": "titans.hf.augmented",
    "MemoryAugmentConfig": "titans.hf.augmented",
    "DistillConfig": "titans.hf.distill",
    "distill": "titans.hf.distill",
    "DecodeStep": "titans.hf.decode_step",
    "export_decode_step": "titans.hf.onnx_export",
    "OnnxDecoder": "titans.hf.onnx_export",
    "add_hf_commands": "titans.hf.commands",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'titans.hf' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
