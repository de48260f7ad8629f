"""``titans task generate|train|eval|pipeline <task>``: the command line of the long-context tasks.

Wire it into the main parser with :func:`add_task_commands`::

    commands = parser.add_subparsers(dest="command", required=True)
    add_task_commands(commands)

Tasks: ``needle``, ``needle-hard``, ``sniah-1``, ``sniah-2``, ``sniah-3``, ``babilong-qa1`` … ``babilong-qa5``.
Every setting is a key of :class:`~titans.tasks.run_config.TaskRunConfig`, settable from a YAML file
(``--config``) and ``--set section.key=value``; the common ones have flags of their own (``--lengths``,
``--num-samples``, ``--steps``, ...), which are applied as ``--set`` overrides before the explicit ones.
Examples::

    titans task generate sniah-1 --out data/sniah1 --lengths 1K 2K --num-samples 50
    titans task train needle --variant mac --out runs/needle-mac
    titans task eval needle --checkpoint runs/needle-mac --out runs/needle-mac/eval
    titans task pipeline needle --variant mac --out artifacts/needle-mac
    titans task train sniah-1 --init-checkpoint runs/lm/best --out runs/sniah1 --steps 500
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from titans.config_io import ConfigError
from titans.models import VARIANTS
from titans.models.presets import preset_names
from titans.tasks.checkpoints import resolve_init_checkpoint
from titans.tasks.run_config import (
    TASK_NAMES,
    TaskRunConfig,
    build_run_config,
    default_run_dict,
    get_task,
    run_config_dict,
)
from titans.tasks.text_utils import parse_token_length

Handler = Callable[[argparse.Namespace], int]


# ------------------------------------------------------------------------------------------------ parsing


def parse_lengths(values: Sequence[str], allow_zero: bool = False) -> list[int]:
    """``["64,128", "1K"]`` → ``[64, 128, 1024]``; ``allow_zero`` accepts 0 (BABILong's "0K": no background).

    Raises:
        ValueError: for an empty list, something that is not a length, or a length below 1 (below 0).
    """
    lengths = [parse_token_length(part) for value in values for part in value.split(",") if part.strip()]
    if not lengths:
        raise ValueError("--lengths needs at least one length")
    smallest = 0 if allow_zero else 1
    bad = [length for length in lengths if length < smallest]
    if bad:
        raise ValueError(f"bad lengths {bad}: lengths must be >= {smallest}")
    return lengths


def _flag_overrides(args: argparse.Namespace, eval_role: bool) -> list[str]:
    """The ``--set`` overrides that the shortcut flags stand for."""
    spec = get_task(args.task)
    overrides: list[str] = []
    if getattr(args, "lengths", None):
        lengths = parse_lengths(args.lengths, allow_zero=spec.kind == "babilong")
        overrides.append(f"data.{'eval_lengths' if eval_role else 'lengths'}={json.dumps(lengths)}")
    if getattr(args, "num_samples", None) is not None:
        key = "eval_samples" if eval_role and not spec.is_needle else "num_samples"
        overrides.append(f"data.{key}={args.num_samples}")
    if getattr(args, "depths", None):
        overrides.append(f"data.depths={json.dumps([float(d) for d in args.depths])}")
    simple = {
        "seed": "data.seed",
        "steps": "train.steps",
        "batch_size": "train.batch_size",
        "lr": "train.lr",
        "device": "train.device",
        "head": "head.kind",
        "piece_len": "eval.piece_len",
        "export_format": "eval.export_format",
        "tokenizer": "data.tokenizer",
        "data_dir": "data.data_dir",
    }
    for name, key in simple.items():
        value = getattr(args, name, None)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    return overrides + list(args.overrides or [])


def _training_config(args: argparse.Namespace) -> TaskRunConfig:
    init_model = None
    if args.init_checkpoint is not None:
        from titans.tasks.checkpoints import read_model_config

        init_model = read_model_config(resolve_init_checkpoint(args.init_checkpoint).config)
    return build_run_config(
        args.task,
        variant=args.variant,
        preset_name=args.preset,
        config_file=args.config,
        overrides=_flag_overrides(args, eval_role=False),
        init_checkpoint=args.init_checkpoint,
        init_model=init_model,
    )


def _evaluation_config(args: argparse.Namespace) -> TaskRunConfig:
    """The run's own config (for a task run folder) or the task's defaults with the checkpoint's model."""
    from titans.tasks.checkpoints import read_model_config
    from titans.tasks.pipeline import is_task_run, read_run_config

    spec = get_task(args.task)
    if is_task_run(args.checkpoint):
        saved = run_config_dict(read_run_config(args.checkpoint))
        if get_task(saved["data"]["task"]).kind != spec.kind:
            raise ValueError(
                f"{args.checkpoint} is a {saved['data']['task']} run; it cannot be evaluated on {spec.name}"
            )
        if saved["data"]["task"] != spec.name:
            saved["data"] = default_run_dict(spec.name)["data"]
        return build_run_config(spec.name, base=saved, config_file=args.config, overrides=_flag_overrides(args, True))
    if spec.is_needle:
        raise ValueError(f"{args.checkpoint}: evaluating {spec.name} needs a 'titans task train {spec.name}' folder")
    model = read_model_config(resolve_init_checkpoint(args.checkpoint).config)
    return build_run_config(spec.name, config_file=args.config, overrides=_flag_overrides(args, True), init_model=model)


# ------------------------------------------------------------------------------------------------ handlers


def _fail(error: Exception) -> int:
    print(f"titans task: error: {error}", file=sys.stderr)
    return 2


def _guarded(handler: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (ConfigError, ValueError, FileNotFoundError, KeyError) as error:
            return _fail(error)

    return run


def _generate(args: argparse.Namespace) -> int:
    from titans.tasks.task_data import write_task_data

    config = build_run_config(args.task, config_file=args.config, overrides=_flag_overrides(args, args.split == "eval"))
    manifest = write_task_data(config.data, args.out, role=args.split)
    count = sum(manifest["num_samples"].values()) if "num_samples" in manifest else len(manifest["files"])
    print(
        f"wrote {config.data.task} data to {args.out} ({count} {'samples' if 'num_samples' in manifest else 'files'})"
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    from titans.tasks.finetune import train_text_task
    from titans.tasks.pipeline import train_needle

    config = _training_config(args)
    if config.data.spec.is_needle:
        _, result = train_needle(config, args.out, echo=not args.quiet)
    else:
        result = train_text_task(config, args.out, echo=not args.quiet)
    print(f"trained {config.data.task}: best step {result.best_step} {result.best_validation}; run in {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from titans.tasks.pipeline import evaluate_needle, evaluate_text_model, load_language_model, load_needle_run
    from titans.tasks.task_data import load_needle_split

    config = _evaluation_config(args)
    device = config.train.device
    if config.data.spec.is_needle:
        _, model = load_needle_run(args.checkpoint, args.which, device)
        dataset = load_needle_split(args.data) if args.data else None
        report = evaluate_needle(model, config, args.out, dataset, {"checkpoint": f"{args.checkpoint} ({args.which})"})
    else:
        lm = load_language_model(args.checkpoint, args.which, device)
        report = evaluate_text_model(lm, config, args.out, args.data, echo=not args.quiet)
    print(f"{config.data.task}: accuracy {report['accuracy']:.4f} over {report['num_samples']} samples; {args.out}")
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    from titans.tasks.pipeline import run_pipeline

    config = _training_config(args)
    report = run_pipeline(config, args.out, echo=not args.quiet)
    print(f"{config.data.task}: test accuracy {report['accuracy']:.4f}; artifacts in {args.out}")
    return 0


# ------------------------------------------------------------------------------------------------ parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=TASK_NAMES, metavar="TASK", help=f"one of: {', '.join(TASK_NAMES)}")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--config", type=Path, help="YAML file of TaskRunConfig settings")
    parser.add_argument(
        "--set", dest="overrides", action="append", metavar="KEY=VALUE", help="override a setting, e.g. train.lr=1e-3"
    )
    parser.add_argument("--seed", type=int, help="data seed (data.seed)")
    parser.add_argument("--quiet", action="store_true", help="do not echo the training log")


def _data_flags(parser: argparse.ArgumentParser, eval_role: bool) -> None:
    what = "evaluation" if eval_role else "training"
    parser.add_argument("--lengths", nargs="+", metavar="N", help=f"{what} lengths, e.g. 64 128 or 1K,2K")
    parser.add_argument(
        "--num-samples",
        type=int,
        help="needle: samples in all (split 80/10/10); text tasks: samples per length",
    )
    parser.add_argument("--depths", nargs="+", type=float, metavar="PCT", help="S-NIAH needle depths in percent")
    parser.add_argument("--tokenizer", help="'bytes' or a tokenizer.json (text tasks)")
    parser.add_argument("--data-dir", help="folder of the shared data files")


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", choices=VARIANTS, help="backbone variant")
    parser.add_argument("--preset", choices=preset_names(), help="model size preset (default: the task's own)")
    parser.add_argument("--init-checkpoint", help="start from this checkpoint (titans train run or task run)")
    parser.add_argument("--head", choices=("local", "final"), help="needle position head")
    parser.add_argument("--steps", type=int, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, help="training batch size")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")


def add_task_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``titans task ...`` on ``subparsers`` (what ``ArgumentParser.add_subparsers`` returned).

    Each command sets ``run`` (a function of the parsed namespace returning an exit code), like the other
    ``titans`` commands.
    """
    task = subparsers.add_parser("task", help="long-context tasks: generate data, train, evaluate, pipeline")
    commands = task.add_subparsers(dest="task_command", required=True)

    generate = commands.add_parser("generate", help="write a task's dataset (JSONL + manifest)")
    _common(generate)
    _data_flags(generate, eval_role=True)
    generate.add_argument(
        "--split", choices=("eval", "train", "validation"), default="eval", help="which prompts (text tasks)"
    )
    generate.set_defaults(run=_guarded(_generate))

    train = commands.add_parser("train", help="train / fine-tune a model on a task")
    _common(train)
    _data_flags(train, eval_role=False)
    _model_flags(train)
    train.set_defaults(run=_guarded(_train))

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint across lengths and depths")
    _common(evaluate)
    _data_flags(evaluate, eval_role=True)
    evaluate.add_argument("--checkpoint", required=True, help="a task run folder, or (text tasks) any LM checkpoint")
    evaluate.add_argument("--which", choices=("best", "last"), default="best", help="which weights of a task run")
    evaluate.add_argument("--data", help="evaluate on a folder written by 'titans task generate'")
    evaluate.add_argument("--device", help="auto, cpu, cuda, ...")
    evaluate.add_argument("--piece-len", type=int, help="read prompts in pieces of this many tokens")
    evaluate.set_defaults(run=_guarded(_eval))

    pipeline = commands.add_parser("pipeline", help="train, evaluate, export and plot into one folder")
    _common(pipeline)
    _data_flags(pipeline, eval_role=False)
    _model_flags(pipeline)
    pipeline.add_argument("--export-format", choices=("torch.export", "torchscript", "none"), help="model export")
    pipeline.set_defaults(run=_guarded(_pipeline))
    return task


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m titans.tasks.commands task ...`` (the same as ``titans task ...`` once wired in)."""
    parser = argparse.ArgumentParser(prog="titans")
    add_task_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
