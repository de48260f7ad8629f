"""Evaluation of language models on S-NIAH / BABILong, and helpers shared with the needle evaluation.

Decoding is greedy. A long prompt is read in pieces of ``eval.piece_len`` tokens with the model's state
carried from piece to piece (so activations stay bounded by the piece, and Titans' memory and attention
caches by their own bounds), then the answer is decoded token by token from that state. Scoring uses the
shared scorers (:func:`~titans.tasks.scoring.score_sniah`, :func:`~titans.tasks.scoring.score_babilong`).

Outputs of :func:`write_text_evaluation` in the output folder: ``report.json`` (the scorer's dict plus a
length × depth grid), ``predictions.csv`` (one row per sample) and ``figures/accuracy_by_length.png`` and
``figures/length_depth_heatmap.png``. A sample's depth is the needle's depth (S-NIAH) or the mean depth of
the story's facts in the context (BABILong), in percent, binned by 10%.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from titans.models import TitansLM
from titans.tasks.babi import babi_answer_labels
from titans.tasks.babilong import BabilongSample
from titans.tasks.finetune import autocast
from titans.tasks.plots import plot_accuracy_by_group, plot_heatmap
from titans.tasks.run_config import TaskRunConfig, TaskSpec
from titans.tasks.scoring import babilong_output_is_correct, score_babilong, score_sniah, sniah_output_is_correct
from titans.tasks.sniah import SNIAHSample
from titans.tasks.task_data import TextSample
from titans.tokenizer import Tokenizer

REPORT_FILE = "report.json"
PREDICTIONS_FILE = "predictions.csv"
FIGURES_DIR = "figures"
DEPTH_BIN_WIDTH = 10.0


# ------------------------------------------------------------------------------------------------ grids, files


def depth_bin(depth_percent: float, width: float = DEPTH_BIN_WIDTH) -> str:
    """``"0-10%"`` … ``"90-100%"`` (100% goes into the last bin)."""
    lower = min(float(depth_percent) // width * width, 100.0 - width)
    return f"{lower:g}-{lower + width:g}%"


def accuracy_grid(rows: Sequence[str], columns: Sequence[int], correct: Sequence[bool]) -> dict[str, Any]:
    """``{row: {column: accuracy or None}}``, rows in the order given by their first appearance when sorted
    by their lower bound, columns (lengths) ascending — for :func:`~titans.tasks.plots.plot_heatmap`."""
    hits: dict[tuple[str, int], list[bool]] = {}
    for row, column, ok in zip(rows, columns, correct):
        hits.setdefault((row, int(column)), []).append(bool(ok))
    row_names = sorted(set(rows), key=_lower_bound)
    column_names = sorted({int(column) for column in columns})
    return {
        row: {
            str(column): (float(np.mean(hits[(row, column)])) if (row, column) in hits else None)
            for column in column_names
        }
        for row in row_names
    }


def _lower_bound(label: str) -> float:
    head = label.split("-")[0].rstrip("%")
    try:
        return float(head)
    except ValueError:
        return float("inf")


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` (only ``columns``, in that order) as a CSV with a header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_json(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ decoding


@torch.no_grad()
def greedy_continuation(
    model: TitansLM, prompt_ids: Sequence[int], max_new_tokens: int, piece_len: int, device: torch.device
) -> list[int]:
    """Greedy continuation of one prompt: all but its last token read in pieces, then decoding."""
    if not prompt_ids:
        raise ValueError("cannot continue an empty prompt")
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    state = None
    for start in range(0, ids.shape[1] - 1, piece_len):
        piece = ids[:, start : min(start + piece_len, ids.shape[1] - 1)]
        state = model(piece, state=state, last_logits_only=True).state
    generation = model.generate(ids[:, -1:], max_new_tokens, temperature=0.0, state=state)
    return [int(token) for token in generation.new_tokens[0].tolist()]


@torch.no_grad()
def greedy_continuations(
    model: TitansLM, prompts: Sequence[Sequence[int]], max_new_tokens: int, piece_len: int, device: torch.device
) -> list[list[int]]:
    """:func:`greedy_continuation` of several prompts as one batch (the same tokens up to floating-point ties).

    The first ``shortest − 1`` tokens of every prompt are read in pieces as one batch; then each prompt advances
    one token per step: its own next token while it has one, else its last greedy token. A long prompt costs
    one batched pass instead of one per prompt, which is what launch-bound models (MAC) need; prompts of very
    different lengths should go in different batches (the steps after the shortest prompt are single tokens).
    """
    if not prompts or any(not prompt for prompt in prompts):
        raise ValueError("cannot continue an empty prompt")
    shortest = min(len(prompt) for prompt in prompts)
    ids = torch.tensor([list(prompt[: shortest - 1]) for prompt in prompts], dtype=torch.long, device=device)
    state = None
    for start in range(0, shortest - 1, piece_len):
        state = model(ids[:, start : start + piece_len], state=state, last_logits_only=True).state
    fed = [prompt[shortest - 1] for prompt in prompts]
    outputs: list[list[int]] = [[] for _ in prompts]
    for position in range(shortest, max(len(prompt) for prompt in prompts) + max_new_tokens):
        out = model(torch.tensor(fed, device=device).unsqueeze(1), state=state, last_logits_only=True)
        state, greedy = out.state, out.logits[:, -1].argmax(dim=-1).tolist()
        for i, prompt in enumerate(prompts):  # position: the index of the token each prompt takes next
            if position < len(prompt):
                fed[i] = prompt[position]
            else:
                fed[i] = greedy[i]
                if len(outputs[i]) < max_new_tokens:
                    outputs[i].append(greedy[i])
    return outputs


def decoding_batches(samples: Sequence[TextSample], batch_size: int, max_spread: int = 256) -> list[list[int]]:
    """Indices of ``samples`` in batches for :func:`greedy_continuations`: one target length per batch, prompt
    lengths within ``max_spread`` tokens, at most ``batch_size`` prompts."""
    order = sorted(range(len(samples)), key=lambda i: (samples[i].target_length, len(samples[i].prompt_ids)))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            first = samples[batches[-1][0]]
            fits = len(batches[-1]) < batch_size and first.target_length == samples[i].target_length
            if fits and len(samples[i].prompt_ids) - len(first.prompt_ids) <= max_spread:
                batches[-1].append(i)
                continue
        batches.append([i])
    return batches


def sample_depth(sample: TextSample) -> float:
    """The needle depth (S-NIAH) or the mean depth of the facts (BABILong), in percent of the context."""
    if isinstance(sample, SNIAHSample):
        return float(sample.depth_percent)
    depths = sample.fact_depth_percents
    return float(np.mean(depths)) if depths else 0.0


def default_max_new_tokens(samples: Sequence[TextSample]) -> int:
    """The longest answer of ``samples`` plus 8 tokens."""
    return max(len(sample.answer_ids) for sample in samples) + 8


def is_correct(sample: TextSample, output: str, labels: Sequence[str] | None = None) -> bool:
    """The shared scorers' per-sample rule."""
    if isinstance(sample, BabilongSample):
        return babilong_output_is_correct(output, sample.answer, labels, sample.question)
    return sniah_output_is_correct(output, sample.answer)


def decode_samples(
    model: nn.Module,
    samples: Sequence[TextSample],
    tokenizer: Tokenizer,
    config: TaskRunConfig,
    device: torch.device,
    echo: bool = False,
) -> list[str]:
    """Greedy outputs (text of the new tokens) of every sample, in order."""
    if not isinstance(model, TitansLM):
        raise TypeError(f"text tasks need a TitansLM, got {type(model).__name__}")
    max_new = config.eval.max_new_tokens or default_max_new_tokens(samples)
    outputs: list[str] = [""] * len(samples)
    model.eval()
    done = 0
    for batch in decoding_batches(samples, config.eval.decode_batch_size):
        prompts = [samples[i].prompt_ids for i in batch]
        with autocast(device, config.train.precision):
            continuations = greedy_continuations(model, prompts, max_new, config.eval.piece_len, device)
        for i, tokens in zip(batch, continuations, strict=True):
            outputs[i] = tokenizer.decode(tokens)
        done += len(batch)
        if echo:
            print(f"decoded {done}/{len(samples)}", flush=True)
    return outputs


# ------------------------------------------------------------------------------------------------ reports


def text_report(
    spec: TaskSpec, samples: Sequence[TextSample], outputs: Sequence[str], data_dir: str | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``report.json`` dict (shared scorer + length × depth grid) and the per-sample CSV rows."""
    labels: list[str] | None = None
    if spec.kind == "babilong":
        labels = sorted(babi_answer_labels(spec.generator_name, data_dir))
        score = score_babilong(samples, outputs, {spec.generator_name: labels})  # type: ignore[arg-type]
    else:
        score = score_sniah(samples, outputs)  # type: ignore[arg-type]
    rows = [_text_row(index, sample, output, labels) for index, (sample, output) in enumerate(zip(samples, outputs))]
    grid = accuracy_grid(
        [row["depth_bin"] for row in rows], [row["length"] for row in rows], [row["correct"] for row in rows]
    )
    report = {"task": spec.name, "metric": "accuracy", **score, "by_depth_bin_and_length": grid}
    return report, rows


def _text_row(index: int, sample: TextSample, output: str, labels: Sequence[str] | None) -> dict[str, Any]:
    depth = sample_depth(sample)
    return {
        "idx": index,
        "task": sample.task,
        "length": sample.target_length,
        "sample_index": sample.sample_index,
        "prompt_tokens": len(sample.prompt_ids),
        "depth_percent": round(depth, 2),
        "depth_bin": depth_bin(depth),
        "answer": sample.answer,
        "output": output,
        "correct": is_correct(sample, output, labels),
    }


TEXT_COLUMNS = (
    "idx", "task", "length", "sample_index", "prompt_tokens", "depth_percent", "depth_bin", "answer", "output",
    "correct",
)  # fmt: skip


def write_text_evaluation(
    out_dir: str | Path, report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], title: str
) -> dict[str, Path]:
    """``report.json``, ``predictions.csv`` and the two figures; returns their paths."""
    out = Path(out_dir)
    figures = out / FIGURES_DIR
    return {
        "report": write_json(out / REPORT_FILE, report),
        "predictions": write_csv(out / PREDICTIONS_FILE, rows, TEXT_COLUMNS),
        "accuracy_by_length": plot_accuracy_by_group(
            report["by_length"], figures / "accuracy_by_length.png", "context length (tokens)", f"{title}: accuracy"
        ),
        "heatmap": plot_heatmap(
            report["by_depth_bin_and_length"],
            figures / "length_depth_heatmap.png",
            "depth",
            "context length (tokens)",
            f"{title}: accuracy by depth and length",
        ),
    }


__all__ = [
    "FIGURES_DIR",
    "PREDICTIONS_FILE",
    "REPORT_FILE",
    "accuracy_grid",
    "decode_samples",
    "decoding_batches",
    "default_max_new_tokens",
    "depth_bin",
    "greedy_continuation",
    "greedy_continuations",
    "is_correct",
    "sample_depth",
    "text_report",
    "write_csv",
    "write_json",
    "write_text_evaluation",
]
