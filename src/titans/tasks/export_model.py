"""Exporting the needle-position model so it runs without this project's Python code.

Two formats:

* ``"torchscript"`` (default): :func:`torch.jit.trace` saved as ``export/model.ts``; reload with
  ``torch.jit.load``. TorchScript is deprecated in recent PyTorch (it warns) but still works, and tracing
  takes seconds where ``torch.export`` of a memory variant takes minutes (it traces every Python loop of
  the chunked memory and MAC's segments symbolically).
* ``"torch.export"``: :func:`torch.export.export` saved with :func:`torch.export.save` as
  ``export/model.pt2``; reload with ``torch.export.load(path).module()``.

The exported program has **fixed shapes**: ``input_ids`` int64 and ``attention_mask`` bool, both
``(batch_size, length)`` (Titans' MAC segments and memory chunks are laid out from the length, so a trace is
specialised to it). Shorter sequences are right-padded (any id; padding is masked) and a smaller batch is
padded with copies of its last row — :func:`predict_with_exported` does both. The output is the (B, L)
float32 position logits with padded positions at the lowest finite value; the prediction is the argmax.
``export/export.json`` records the format, file, shapes and the model's head and variant.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from titans.tasks.needle import PAD_ID, NeedleDataset, collate_needle_batch
from titans.tasks.position_model import NeedlePositionModel, exportable_copy

EXPORT_DIR = "export"
EXPORT_MANIFEST = "export.json"
EXPORT_FILES = {"torch.export": "model.pt2", "torchscript": "model.ts"}

ExportedFn = Callable[[Tensor, Tensor], Tensor]


def _example_inputs(batch_size: int, length: int, vocab_size: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, vocab_size, (batch_size, length), generator=generator)
    attention_mask = torch.ones(batch_size, length, dtype=torch.bool)
    attention_mask[-1, length // 2 :] = False  # one padded row, so nothing specialises on a full mask
    return input_ids, attention_mask


def export_position_model(
    model: NeedlePositionModel, out_dir: str | Path, fmt: str, batch_size: int, length: int
) -> dict[str, Any]:
    """Export ``model`` (a CPU copy, inputs (batch_size, length)) into ``out_dir``; return the manifest."""
    if fmt not in EXPORT_FILES:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {list(EXPORT_FILES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clone = exportable_copy(model)
    inputs = _example_inputs(batch_size, length, clone.config.vocab_size)
    path = out / EXPORT_FILES[fmt]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings
        if fmt == "torch.export":
            torch.export.save(torch.export.export(clone, inputs), str(path))
        else:
            torch.jit.trace(clone, inputs, check_trace=False).save(str(path))
    manifest = {
        "format": fmt,
        "file": path.name,
        "batch_size": batch_size,
        "length": length,
        "inputs": {
            "input_ids": f"int64 ({batch_size}, {length}), right-padded",
            "attention_mask": f"bool ({batch_size}, {length}), True on real tokens",
        },
        "output": f"float32 ({batch_size}, {length}) position logits, padding at the lowest finite value",
        "head": clone.head_kind,
        "variant": clone.config.variant,
        "load": "torch.export.load(path).module()" if fmt == "torch.export" else "torch.jit.load(path)",
    }
    (out / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def load_exported(out_dir: str | Path) -> tuple[ExportedFn, dict[str, Any]]:
    """The exported model of ``out_dir`` (a callable ``(input_ids, attention_mask) -> logits``) and its manifest."""
    out = Path(out_dir)
    manifest_path = out / EXPORT_MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no exported model in {out}: {EXPORT_MANIFEST} is missing")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    path = out / manifest["file"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if manifest["format"] == "torch.export":
            module: ExportedFn = torch.export.load(str(path)).module()
        else:
            module = torch.jit.load(str(path))
    return module, manifest


def fixed_shape_batches(dataset: NeedleDataset, batch_size: int, length: int) -> list[tuple[Tensor, Tensor, int]]:
    """``(input_ids, attention_mask, real_rows)`` batches of exactly (batch_size, length), in dataset order."""
    if len(dataset) == 0:
        raise ValueError("cannot evaluate an empty dataset")
    longest = int(dataset.lengths.max())
    if longest > length:
        raise ValueError(f"a sequence has {longest} tokens, more than the exported length {length}")
    batches = []
    for start in range(0, len(dataset), batch_size):
        examples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        filled = examples + [examples[-1]] * (batch_size - len(examples))
        batch = collate_needle_batch(filled, pad_id=PAD_ID, pad_to_multiple_of=length)
        batches.append((batch.input_ids, batch.attention_mask, len(examples)))
    return batches


@torch.no_grad()
def fixed_shape_logits(fn: ExportedFn, dataset: NeedleDataset, batch_size: int, length: int) -> Tensor:
    """Position logits (N, length) of ``fn`` (an exported module or the model itself) over ``dataset``."""
    outputs = [fn(input_ids, mask)[:rows] for input_ids, mask, rows in fixed_shape_batches(dataset, batch_size, length)]
    return torch.cat(outputs).float()


def predict_with_exported(out_dir: str | Path, dataset: NeedleDataset) -> tuple[np.ndarray, Tensor]:
    """Load the exported model of ``out_dir`` and return its predictions (N,) and logits (N, length)."""
    module, manifest = load_exported(out_dir)
    logits = fixed_shape_logits(module, dataset, int(manifest["batch_size"]), int(manifest["length"]))
    return logits.argmax(dim=-1).numpy(), logits


def compare_with_model(
    model: NeedlePositionModel, out_dir: str | Path, dataset: NeedleDataset, atol: float = 1e-4
) -> dict[str, Any]:
    """Run the checkpoint's model and the exported one on ``dataset``; equal predictions, logit differences."""
    _, manifest = load_exported(out_dir)
    batch_size, length = int(manifest["batch_size"]), int(manifest["length"])
    exported_predictions, exported_logits = predict_with_exported(out_dir, dataset)
    reference = fixed_shape_logits(exportable_copy(model), dataset, batch_size, length)
    real = reference > torch.finfo(reference.dtype).min
    difference = float((exported_logits - reference)[real].abs().max()) if bool(real.any()) else 0.0
    same = bool((torch.from_numpy(exported_predictions) == reference.argmax(dim=-1)).all())
    return {
        "num_samples": len(dataset),
        "predictions_equal": same,
        "max_abs_logit_difference": difference,
        "logits_close": difference <= atol,
    }


__all__ = [
    "EXPORT_DIR",
    "EXPORT_MANIFEST",
    "compare_with_model",
    "export_position_model",
    "fixed_shape_batches",
    "fixed_shape_logits",
    "load_exported",
    "predict_with_exported",
]
