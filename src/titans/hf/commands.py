"""``titans distill`` and ``titans convert``: :func:`add_hf_commands` registers them on the ``titans`` command
line. Nothing here imports ``transformers`` until a command runs, so ``titans --help`` works without the
``hf`` extra."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_hf_commands(subparsers: Any) -> None:
    """Add ``distill`` and ``convert`` to ``subparsers`` (the object ``add_subparsers`` returned); each sets
    ``run`` to a function of the parsed arguments returning the exit code."""
    _add_distill(subparsers)
    _add_convert(subparsers)


def _add_distill(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "distill",
        help="train a neural memory added to a Hugging Face LM by distillation from a teacher",
        description="Wrap --student (a Hugging Face causal LM folder, or a memory-augmented folder saved by an "
        "earlier run) with a Titans neural memory and train it so that, reading segment by segment, it matches "
        "--teacher reading whole rows (KL on temperature-softened logits, optionally mixed with the LM loss).",
    )
    p.add_argument("--student", required=True, help="Hugging Face causal LM folder, or a memory-augmented folder")
    p.add_argument("--teacher", required=True, help="Hugging Face causal LM folder (titans folders work too)")
    p.add_argument("--data", required=True, help="corpus: JSONL with a 'text' field, a text file or a folder of .txt")
    p.add_argument("--out", required=True, help="folder to save the memory-augmented student to")
    p.add_argument("--tokenizer", default="bytes", help="'bytes', a tokenizer.json, or a folder with a HF tokenizer")
    p.add_argument("--mode", choices=("gate", "context"), default="gate", help="how the memory joins (new students)")
    p.add_argument("--segment-len", type=int, default=64, help="tokens the student reads at once (new students)")
    p.add_argument("--memory-heads", type=int, default=2)
    p.add_argument("--memory-depth", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=16)
    p.add_argument("--gate-init", type=float, default=0.0, help="initial memory gate (0: starts as the base model)")
    p.add_argument("--train-base", action="store_true", help="train the base model too (default: frozen)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=0.0, help="weight of the LM loss (1 − alpha: the KL term)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run_distill)


def _add_convert(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert between a native checkpoint (titans train) and a Hugging Face folder",
        description="SRC is a native checkpoint folder (model.safetensors + config.yaml, or a run folder with "
        "best/ or last/) or a Hugging Face folder (config.json); DST gets the other format unless --to says.",
    )
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--to", choices=("hf", "native"), default=None, help="target format (default: the other one)")
    p.set_defaults(run=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from titans.hf.convert import convert

    dst = convert(args.src, args.dst, args.to)
    print(f"wrote {dst}")
    return 0


def _encoder(spec: str) -> Any:
    """A function text → token ids for ``spec`` (see ``--tokenizer``)."""
    if Path(spec).is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(spec)
        return lambda text: list(tokenizer(text)["input_ids"])
    from titans.tokenizer import load_tokenizer

    return load_tokenizer(spec).encode


def _student(args: argparse.Namespace) -> Any:
    from transformers import AutoModelForCausalLM

    from titans.hf.augmented import MemoryAugmentConfig, MemoryAugmentedLM, is_augmented_dir

    if is_augmented_dir(args.student):
        model = MemoryAugmentedLM.from_pretrained(args.student)
        model.base.requires_grad_(args.train_base)
        return model
    config = MemoryAugmentConfig(
        mode=args.mode,
        segment_len=args.segment_len,
        memory_heads=args.memory_heads,
        memory_depth=args.memory_depth,
        chunk_size=args.chunk_size,
        gate_init=args.gate_init,
        freeze_base=not args.train_base,
    )
    return MemoryAugmentedLM(AutoModelForCausalLM.from_pretrained(args.student), config)


def run_distill(args: argparse.Namespace) -> int:
    import titans.hf.modeling  # noqa: F401  (registers model_type "titans" for teachers)
    from titans.hf.distill import DistillConfig, distill, read_rows

    config = DistillConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        temperature=args.temperature,
        alpha=args.alpha,
        seed=args.seed,
    ).validate()
    from transformers import AutoModelForCausalLM

    student = _student(args)
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher)
    rows = read_rows(args.data, _encoder(args.tokenizer), config.seq_len, config.steps * config.batch_size)

    def log(step: int, values: dict[str, float]) -> None:
        print(json.dumps({"step": step, **{k: round(v, 5) for k, v in values.items()}}), file=sys.stderr)

    losses = distill(student, teacher, rows, config, log)
    student.save_pretrained(args.out)
    print(json.dumps({"out": str(args.out), "first_loss": losses[0], "last_loss": losses[-1], "rows": len(rows)}))
    return 0


__all__ = ["add_hf_commands", "run_convert", "run_distill"]
