"""Held-out evaluation: bits per byte (bits per token for other tokenizers) over a split, and by position
inside long documents.

The loss by position is what shows the long-term memory at work. Each long document is read in pieces of
``eval.piece_len`` tokens; the state the model returns after one piece (memory weights, momentum, attention
caches) is passed into the next call, so the memory reaches far beyond one training row. The loss of every
predicted token is added to the bucket of its position (e.g. 0–1K, 1K–4K, 4K–16K, 16K–64K) and to a finer
curve with one point per piece.

``evaluate_run`` loads a checkpoint, runs both, merges the result into ``RUN/eval.json`` under the split's
name, and draws the plots.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from titans.config_io import to_dict
from titans.data import IGNORE_INDEX, Batch, iter_eval_batches, iter_eval_documents, normalize_split
from titans.models import TitansLM
from titans.models.lm import summed_token_loss
from titans.training.checkpoint import atomic_write as _atomic_write
from titans.training.checkpoint import (
    checkpoint_step,
    load_model_weights,
    read_checkpoint_config,
    resolve_checkpoint,
)
from titans.training.config import DataConfig, Precision, RunConfig, load_run_config
from titans.training.corpus import packed_rows, tokenized_split
from titans.training.distributed import choose_device
from titans.training.precision import autocast

LN2 = math.log(2.0)
EVAL_FILE = "eval.json"


def bits_unit(data: DataConfig) -> str:
    """``"bits_per_byte"`` for the byte tokenizer (a token is a byte), ``"bits_per_token"`` otherwise."""
    return "bits_per_byte" if data.uses_bytes else "bits_per_token"


@dataclass
class LossTotal:
    """A running sum of token losses (nats) and the number of tokens they cover."""

    nats: float = 0.0
    tokens: int = 0

    def add(self, nats: float, tokens: int) -> None:
        self.nats += nats
        self.tokens += tokens

    @property
    def loss(self) -> float:
        """Mean cross-entropy in nats per token (NaN when empty)."""
        return self.nats / self.tokens if self.tokens else math.nan

    @property
    def bits(self) -> float:
        """Mean cross-entropy in bits per token."""
        return self.loss / LN2


@torch.no_grad()
def heldout_loss(
    model: torch.nn.Module, batches: Iterable[Batch], device: torch.device, precision: Precision
) -> LossTotal:
    """The summed loss of ``model`` over ``batches`` (each row starts a fresh memory)."""
    total = LossTotal()
    for input_ids, labels in batches:
        input_ids, labels = input_ids.to(device), labels.to(device)
        with autocast(precision, device):
            logits = model(input_ids).logits
        total.add(float(summed_token_loss(logits, labels)), int((labels != IGNORE_INDEX).sum()))
    return total


# ------------------------------------------------------------------------------------------- by position


def bucket_bounds(buckets: Sequence[int]) -> list[tuple[int, int | None]]:
    """``[0, 1024, 4096]`` → ``[(0, 1024), (1024, 4096), (4096, None)]`` (None: no upper end)."""
    ends: list[int | None] = [*buckets[1:], None]
    return list(zip(buckets, ends))


def _bucket_label(start: int, end: int | None) -> str:
    def short(n: int) -> str:
        return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)

    return f"{short(start)}+" if end is None else f"{short(start)}–{short(end)}"


@torch.no_grad()
def document_token_losses(
    model: TitansLM, tokens: np.ndarray, piece_len: int, device: torch.device, precision: Precision
) -> np.ndarray:
    """The loss (nats) of every next-token prediction in one document, reading it ``piece_len`` tokens at a
    time and carrying the model's state from piece to piece. Entry ``p`` predicts token ``p + 1``."""
    ids = torch.as_tensor(tokens, dtype=torch.long, device=device).unsqueeze(0)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    losses = []
    state = None
    for start in range(0, inputs.shape[1], piece_len):
        piece = slice(start, start + piece_len)
        with autocast(precision, device):
            out = model(inputs[:, piece], state=state)
        state = out.state
        per_token = F.cross_entropy(out.logits.float()[0], targets[0, piece], reduction="none")
        losses.append(per_token.double().cpu())
    return torch.cat(losses).numpy()


class PositionTotals:
    """Token losses summed per position bucket and per piece, over any number of documents."""

    def __init__(self, buckets: Sequence[int], piece_len: int):
        self.bounds = bucket_bounds(buckets)
        self.piece_len = piece_len
        self.buckets = [LossTotal() for _ in self.bounds]
        self.pieces: list[LossTotal] = []
        self.piece_ends: list[int] = []
        self.document_tokens: list[int] = []

    def add_document(self, losses: np.ndarray) -> None:
        """Add one document's per-token losses (entry ``p`` predicts token ``p + 1``)."""
        self.document_tokens.append(len(losses) + 1)
        positions = np.arange(len(losses))
        for total, (start, end) in zip(self.buckets, self.bounds):
            chosen = (positions >= start) & (positions < (len(losses) if end is None else end))
            total.add(float(losses[chosen].sum()), int(chosen.sum()))
        for index, first in enumerate(range(0, len(losses), self.piece_len)):
            if index == len(self.pieces):
                self.pieces.append(LossTotal())
                self.piece_ends.append(first)
            piece = losses[first : first + self.piece_len]
            self.pieces[index].add(float(piece.sum()), len(piece))
            self.piece_ends[index] = max(self.piece_ends[index], first + len(piece))

    def as_dict(self) -> dict[str, Any]:
        """``buckets`` (non-empty ones, labelled) and ``curve`` (one point per piece), in bits and nats."""
        return {
            "piece_len": self.piece_len,
            "documents": len(self.document_tokens),
            "document_tokens": self.document_tokens,
            "buckets": [
                _position_record(total, start, end, _bucket_label(start, end))
                for total, (start, end) in zip(self.buckets, self.bounds)
                if total.tokens
            ],
            "curve": [
                _position_record(total, index * self.piece_len, end)
                for index, (total, end) in enumerate(zip(self.pieces, self.piece_ends))
            ],
        }


def loss_by_position(
    model: TitansLM,
    documents: Iterable[np.ndarray],
    piece_len: int,
    buckets: Sequence[int],
    device: torch.device,
    precision: Precision,
) -> dict[str, Any]:
    """Loss per position bucket and per piece, over long documents read with the state carried along."""
    totals = PositionTotals(buckets, piece_len)
    for tokens in documents:
        totals.add_document(document_token_losses(model, tokens, piece_len, device, precision))
    return totals.as_dict()


def _position_record(total: LossTotal, start: int, end: int | None, label: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "start": start,
        "end": end,
        "tokens": total.tokens,
        "loss": total.loss,
        "bits": total.bits,
    }
    if label is not None:
        record["label"] = label
    return record


# ------------------------------------------------------------------------------------------- a whole run


def load_model(checkpoint: Path, config: RunConfig, device: torch.device) -> TitansLM:
    """A :class:`TitansLM` of ``config.model`` with the checkpoint's weights, on ``device``, in eval mode."""
    model = TitansLM(config.model).to(device)
    load_model_weights(checkpoint, model, config.model)
    return model.eval()


def evaluate_model(
    model: TitansLM, config: RunConfig, split: str, device: torch.device, max_batches: int | None
) -> dict[str, Any]:
    """Held-out loss over ``split`` and loss by position in its longest documents."""
    data = tokenized_split(config, split)
    rows = packed_rows(data, config.data.seq_len)
    batches = iter_eval_batches(rows, config.eval.batch_size, max_batches)
    total = heldout_loss(model, batches, device, config.train.precision)
    documents = iter_eval_documents(data, config.eval.num_documents, config.eval.max_document_len)
    positions = loss_by_position(
        model, documents, config.eval.piece_len, config.eval.position_buckets, device, config.train.precision
    )
    return {
        "split": normalize_split(split),
        "unit": bits_unit(config.data),
        "loss": total.loss,
        "bits": total.bits,
        "tokens": total.tokens,
        "by_position": positions,
    }


def evaluate_run(
    checkpoint_path: str | Path,
    split: str = "valid",
    overrides: Sequence[str] = (),
    device: str = "auto",
    plots: bool = True,
) -> dict[str, Any]:
    """Evaluate a checkpoint (a run folder or a checkpoint folder) on ``split``; update ``eval.json`` and plots.

    ``overrides`` may change the ``data`` and ``eval`` sections (e.g. ``eval.num_documents=8``); the model
    section must match the checkpoint.
    """
    checkpoint = resolve_checkpoint(checkpoint_path)
    stored = read_checkpoint_config(checkpoint)
    config = load_run_config(to_dict(stored), overrides) if overrides else stored
    torch_device = choose_device(device if device != "auto" else config.train.device)
    model = load_model(checkpoint, config, torch_device)
    result = evaluate_model(model, config, split, torch_device, config.eval.max_batches)
    result.update({"checkpoint": str(checkpoint), "step": checkpoint_step(checkpoint)})
    run_dir = checkpoint.parent
    write_eval_result(run_dir / EVAL_FILE, result)
    if plots:
        from titans.training.plots import draw_run_plots

        result["plots"] = [str(p) for p in draw_run_plots(run_dir)]
    return result


def write_eval_result(path: Path, result: dict[str, Any]) -> None:
    """Merge ``result`` into the JSON file at ``path`` under its split's name (written atomically)."""
    merged: dict[str, Any] = {}
    if path.is_file():
        try:
            merged = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            merged = {}
    merged[result["split"]] = result
    text = json.dumps(merged, indent=2, allow_nan=True) + "\n"
    _atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def format_result(result: dict[str, Any]) -> str:
    """A few readable lines: the split's bits, then one line per position bucket."""
    unit = result["unit"].replace("_", " ")
    lines = [
        f"{result['split']}: {result['bits']:.4f} {unit} ({result['loss']:.4f} nats/token, {result['tokens']:,} tokens)"
    ]
    positions = result["by_position"]
    lines.append(
        f"by position ({positions['documents']} document(s), pieces of {positions['piece_len']} tokens, state carried):"
    )
    for bucket in positions["buckets"]:
        lines.append(f"  {bucket['label']:>12}  {bucket['bits']:.4f} {unit}  ({bucket['tokens']:,} tokens)")
    return "\n".join(lines)
