"""The ``titans`` command: ``train``, ``eval``, ``generate``, ``demo``, ``verify``, and the commands of the
long-context tasks (``task``), of the Hugging Face bridge (``distill``, ``convert``) and of the reproduction
suites (``repro``).

Bad input (a config key, a data file, a checkpoint) prints ``error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from titans.config_io import ConfigError
from titans.data.readers import DataError

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataError, FileNotFoundError, FileExistsError)
"""Exceptions that mean the input is wrong, not the program: reported in one line, no traceback."""


def _demo(args: argparse.Namespace) -> int:
    from titans.demo import run_demo

    run_demo()
    return 0


def _verify(args: argparse.Namespace) -> int:
    from titans.equations import verify

    return verify()


# --------------------------------------------------------------------------------------------- train


def _default_run_dir(config_path: str | None) -> Path:
    return Path("runs") / (Path(config_path).stem if config_path else "tiny")


def _train(args: argparse.Namespace) -> int:
    from titans.training import load_run_config, train
    from titans.training.checkpoint import CONFIG_FILE

    run_dir = Path(args.out) if args.out else _default_run_dir(args.config)
    source: str | Path | None = args.config
    if source is None and args.resume and (run_dir / CONFIG_FILE).is_file():
        source = run_dir / CONFIG_FILE  # continue with the run's own config (plus any --set)
    config = load_run_config(source, args.overrides)
    result = train(config, run_dir, resume=args.resume, progress=not args.no_progress)
    if result.eval_result is None:  # not rank 0 of several processes
        return 0
    _print_train_summary(result)
    return 0


def _print_train_summary(result: object) -> None:
    from titans.training.evaluate import format_result
    from titans.training.trainer import TrainResult

    assert isinstance(result, TrainResult)
    evaluation = result.eval_result or {}
    unit = str(evaluation.get("unit", "bits")).replace("_", " ")

    def bits(loss: float | None) -> str:
        return "n/a" if loss is None else f"{loss / math.log(2):.4f}"

    print(f"validation: {bits(result.first_val_loss)} → {bits(result.last_val_loss)} {unit} "
          f"(best {bits(result.best_val_loss)}) after {result.steps} steps, {result.elapsed_s:.0f} s")  # fmt: skip
    if evaluation:
        print(format_result(evaluation))
    print(f"run folder: {result.run_dir} (best/, last/, metrics.jsonl, eval.json, plots/)")


# --------------------------------------------------------------------------------------------- eval / generate


def _eval(args: argparse.Namespace) -> int:
    from titans.training import evaluate_run
    from titans.training.evaluate import format_result

    result = evaluate_run(args.checkpoint, args.split, args.overrides, device=args.device)
    print(format_result(result))
    print(f"checkpoint: {result['checkpoint']} (step {result['step']}); written: eval.json, "
          + ", ".join(result.get("plots", [])))  # fmt: skip
    return 0


def _generate(args: argparse.Namespace) -> int:
    from titans.training import generate_text

    if not args.prompt:
        raise ConfigError("--prompt must not be empty")
    text = generate_text(
        args.checkpoint,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        seed=args.seed,
        device=args.device,
    )
    print(args.prompt + text)
    return 0


# --------------------------------------------------------------------------------------------- parser


def _add_overrides(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config value, e.g. {what} (repeatable)")  # fmt: skip


def _add_train_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="train a language model (default: the tiny config on the bundled sample corpus)",
        description="Train a Titans language model. Launch with torchrun for several processes.",
    )
    parser.add_argument("--config", help="a run config YAML (default: the tiny config, configs/tiny.yaml)")
    _add_overrides(parser, "--set model.depth=4 --set train.lr=1e-3")
    parser.add_argument("--out", help="run folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=_train)


def _add_eval_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("eval", help="bits per byte of a checkpoint, overall and by position")
    parser.add_argument("--checkpoint", required=True, help="a run folder (uses best/, else last/) or a checkpoint")
    parser.add_argument("--split", default="valid", help="valid (default) or test")
    _add_overrides(parser, "--set eval.num_documents=8")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    parser.set_defaults(run=_eval)


def _add_generate_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("generate", help="continue a prompt with a checkpoint")
    parser.add_argument("--checkpoint", required=True, help="a run folder (uses best/, else last/) or a checkpoint")
    parser.add_argument("--prompt", default="The ", help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=50, help="0: no top-k filter")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold")
    parser.add_argument("--seed", type=int, default=None, help="make the sampling repeatable")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(run=_generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="titans", description="Titans: neural long-term memory at test time.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="watch the memory memorise key/value pairs at test time").set_defaults(run=_demo)
    commands.add_parser("verify", help="run each equation's tests and list their status").set_defaults(run=_verify)
    _add_train_parser(commands)
    _add_eval_parser(commands)
    _add_generate_parser(commands)
    _add_other_commands(commands)
    return parser


def _add_other_commands(commands: argparse._SubParsersAction) -> None:
    """``titans task ...`` (:mod:`titans.tasks.commands`), ``titans distill`` and ``titans convert``
    (:mod:`titans.hf.commands`), ``titans repro`` (:mod:`titans.repro.commands`): registered by the packages
    that define them, when present."""
    import importlib

    for module_name, function_name in (
        ("titans.tasks.commands", "add_task_commands"),
        ("titans.hf.commands", "add_hf_commands"),
        ("titans.repro.commands", "add_repro_commands"),
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # a build without that package
            continue
        getattr(module, function_name)(commands)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
