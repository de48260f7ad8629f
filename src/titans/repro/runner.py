"""Run the runs of a suite one after the other, in this process, skipping those already done.

Each run is what two commands do, and its record says so (``command``)::

    titans train --config CONFIG --set ... --out OUT/NAME       # trains, then evaluates best/ on valid
    titans eval --checkpoint OUT/NAME --split test              # the suite's metric split, when not valid

A run is *done* when ``OUT/NAME/repro.json`` says so; it is then skipped. A run folder with a ``last/``
checkpoint but no such record (an interrupted run) is resumed exactly (``--resume``). A failing run is
recorded as failed (with the error) and the suite goes on with the next; it is tried again next time.
Before anything trains, every run's config is loaded and compared with the config of the run already in its
folder, if any: a difference (say ``train.steps``) is an error, not a silent skip — choose another ``--out``.

For one process per run (a crash or a broken CUDA context then ends only that run), call the command once
per run: ``titans repro SUITE --only NAME``; each call collects the results of all runs so far.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from titans.config_io import ConfigError, load_config, to_dict
from titans.repro.suite import PlannedRun, Suite
from titans.training.config import RunConfig, corpus_path

RECORD_FILE = "repro.json"
"""The run record that :func:`run_suite` writes into each run folder when the run ends (done or failed)."""

# Keys that do not change what a run computes: a run folder made with other values is still the same run.
_NEUTRAL_KEYS = frozenset(
    {"data.cache_dir", "train.tensorboard", "train.wandb", "train.wandb_project", "model.check_inputs", "model.impl"}
)

Echo = Callable[[str], None]


# ------------------------------------------------------------------------------------------------ facts


def display_path(path: Path | str) -> str:
    """``path`` relative to the current directory when it lies below it, else absolute."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def git_commit(where: Path | None = None) -> tuple[str | None, bool | None]:
    """The commit (``git rev-parse HEAD``) of the repository holding this package, and whether tracked files
    differ from it; ``(None, None)`` outside a git checkout."""
    cwd = where or Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status)


def cpu_name() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_facts(config: RunConfig) -> dict[str, Any]:
    """The device a run of ``config`` uses in this process, by name, and its arithmetic."""
    import torch

    from titans.training.distributed import choose_device
    from titans.training.precision import uses_bf16

    device = choose_device(config.train.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "device": str(device),
        "device_name": name,
        "precision": "bf16 autocast" if uses_bf16(config.train.precision, device) else "fp32",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def parameter_counts(config: RunConfig) -> dict[str, int]:
    """Total and non-embedding parameters of the run's model (counted on the ``meta`` device: no memory)."""
    from titans.models.presets import meta_model
    from titans.models.summary import count_parameters

    model = meta_model(config.model)
    total, non_embedding = count_parameters(model), count_parameters(model, embeddings=False)
    return {"parameters": total, "non_embedding_parameters": non_embedding}


def run_commands(run: PlannedRun, metric_split: str) -> list[list[str]]:
    """The ``titans`` command lines that make the run by hand (what this module does in-process)."""
    out = display_path(run.run_dir)
    train = ["titans", "train"]
    if run.config_file is not None:
        train += ["--config", display_path(run.config_file)]
    for override in run.overrides:
        train += ["--set", override]
    train += ["--out", out]
    commands = [train]
    if metric_split != "valid":
        commands.append(["titans", "eval", "--checkpoint", out, "--split", metric_split])
    return commands


def command_string(commands: Sequence[Sequence[str]]) -> str:
    import shlex

    return " && ".join(shlex.join(command) for command in commands)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run record of ``run_dir`` (None when absent or unreadable)."""
    path = run_dir / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    from titans.training.checkpoint import atomic_write

    run_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2, allow_nan=True) + "\n"
    atomic_write(run_dir / RECORD_FILE, lambda file: file.write(text.encode("utf-8")))


# ------------------------------------------------------------------------------------------------ checks


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: data}


def config_changes(stored: RunConfig, planned: RunConfig) -> list[str]:
    """``"key: old → new"`` for every key that differs (and changes what the run computes)."""
    old, new = _flatten(to_dict(stored)), _flatten(to_dict(planned))
    return [
        f"{key}: {old.get(key)!r} → {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if key not in _NEUTRAL_KEYS and old.get(key) != new.get(key)
    ]


def stored_config(run_dir: Path) -> RunConfig | None:
    """The config of the run already in ``run_dir`` (written when its training started), if any."""
    from titans.training.checkpoint import CONFIG_FILE

    path = run_dir / CONFIG_FILE
    return load_config(RunConfig, path) if path.is_file() else None


def run_state(run_dir: Path) -> str:
    """``"done"``, ``"resume"`` (a ``last/`` checkpoint, no finished record) or ``"new"``."""
    from titans.training.checkpoint import LAST, find_checkpoint

    record = read_record(run_dir)
    if record is not None and record.get("status") == "done":
        return "done"
    return "resume" if find_checkpoint(run_dir, LAST) is not None else "new"


# ------------------------------------------------------------------------------------------------ running


@dataclass
class RunOutcome:
    """What :func:`run_suite` did with one run: ``skipped`` (already done), ``done``, ``failed`` or, in a dry
    run, ``would run`` / ``would resume``."""

    name: str
    status: str
    error: str | None = None


def select_runs(planned: list[PlannedRun], only: Sequence[str]) -> list[PlannedRun]:
    """The runs named in ``only`` (names may also be comma-separated), in suite order; all when empty."""
    wanted = [name.strip() for item in only for name in item.split(",") if name.strip()]
    known = {run.name for run in planned}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ConfigError(f"unknown run(s) {', '.join(unknown)}; the suite has: {', '.join(sorted(known))}")
    return [run for run in planned if not wanted or run.name in wanted]


def _preflight(run: PlannedRun) -> tuple[RunConfig, str]:
    """The run's config and state; raises when the folder holds a different run or the corpus is missing."""
    config = run.load_config()
    state = run_state(run.run_dir)
    stored = stored_config(run.run_dir)
    if stored is not None:
        changes = config_changes(stored, config)
        if changes:
            raise ConfigError(
                f"suite run {run.name!r}: {display_path(run.run_dir)} holds a run with another config "
                f"({'; '.join(changes)}); pass another --out, or remove that folder"
            )
    if state != "done":
        corpus = corpus_path(config.data)
        if not corpus.exists():
            raise FileNotFoundError(f"suite run {run.name!r}: corpus not found: {corpus} (config key 'data.path')")
    return config, state


def run_suite(
    suite: Suite,
    out_dir: str | Path,
    only: Sequence[str] = (),
    overrides: Sequence[str] = (),
    progress: bool = True,
    dry_run: bool = False,
    echo: Echo = print,
    run_plots: bool = True,
) -> list[RunOutcome]:
    """Train and evaluate every selected run of ``suite`` that is not done yet, in suite order.

    Every selected run is checked first (config, folder, corpus), so a mistake in the last run stops the
    suite before the first one trains. ``run_plots=False`` leaves out each run's own plots (``NAME/plots/``;
    seconds per run on a CPU); the suite's plots are drawn from the results either way.
    """
    runs = select_runs(suite.plan(out_dir, list(overrides)), only)
    checked = [(run, *_preflight(run)) for run in runs]
    if not dry_run and any(state != "done" for _, _, state in checked):
        _warm_up()
    outcomes = []
    for index, (run, config, state) in enumerate(checked, start=1):
        commands = run_commands(run, suite.spec.metric_split)
        heading = f"[{index}/{len(checked)}] {run.name}"
        if state == "done":
            echo(f"{heading}: done already ({display_path(run.run_dir / RECORD_FILE)}), skipped")
            outcomes.append(RunOutcome(run.name, "skipped"))
            continue
        if dry_run:
            echo(f"{heading}: would {'resume' if state == 'resume' else 'run'}: {command_string(commands)}")
            outcomes.append(RunOutcome(run.name, f"would {'resume' if state == 'resume' else 'run'}"))
            continue
        echo(f"{heading}: {'resuming' if state == 'resume' else 'running'}: {command_string(commands)}")
        resume = state == "resume"
        outcomes.append(execute_run(run, config, suite.spec.metric_split, resume, progress, echo, run_plots))
    return outcomes


def execute_run(
    run: PlannedRun,
    config: RunConfig,
    metric_split: str,
    resume: bool,
    progress: bool,
    echo: Echo = print,
    run_plots: bool = True,
) -> RunOutcome:
    """Train ``run`` (final evaluation on valid), evaluate ``metric_split``, and write the run record."""
    commands = run_commands(run, metric_split)
    commit, dirty = git_commit()
    record: dict[str, Any] = {
        "name": run.name,
        "label": run.label,
        "notes": run.notes,
        "command": command_string(commands),
        "commands": commands,
        "config_file": None if run.config_file is None else display_path(run.config_file),
        "overrides": list(run.overrides),
        "seed": config.train.seed,
        "commit": commit,
        "dirty": dirty,
        "resumed": resume,
        "started_at": _now(),
        **parameter_counts(config),
    }
    started = time.perf_counter()
    try:
        record.update(device_facts(config))
        _reset_peak_memory(record["device"])
        record.update(_train_and_evaluate(run, config, metric_split, resume, progress, run_plots))
        record["peak_memory_gib"] = _peak_memory_gib(record["device"])
    except Exception as error:  # one failing run must not end the suite; KeyboardInterrupt still does
        record.update(status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
        echo(f"{run.name}: FAILED — {type(error).__name__}: {error}")
    else:
        record["status"] = "done"
    record["finished_at"] = _now()
    record["wall_time_s"] = time.perf_counter() - started
    write_record(run.run_dir, record)
    return RunOutcome(run.name, record["status"], record.get("error"))


def _train_and_evaluate(
    run: PlannedRun, config: RunConfig, metric_split: str, resume: bool, progress: bool, run_plots: bool
) -> dict[str, Any]:
    """What ``titans train`` then ``titans eval --split METRIC`` do: train, evaluate best/ on valid, then on
    the metric split (the run's plots drawn once, at the end)."""
    from titans.training import evaluate_run, train

    result = train(config, run.run_dir, resume=resume, progress=progress, final_eval=False)
    splits = ["valid"] if metric_split == "valid" else ["valid", metric_split]
    for index, split in enumerate(splits):
        last = index == len(splits) - 1
        evaluate_run(run.run_dir, split, device=config.train.device, plots=run_plots and last)
    return {"train_time_s": result.elapsed_s, "steps": result.steps, "evaluated_splits": splits}


def _warm_up() -> None:
    """Pay this process's one-time start-up costs before the first run's clock starts, so that wall times
    compare across the runs of a suite: torch's first optimizer imports ``torch._dynamo`` (seconds)."""
    import torch

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])


def _reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_gib(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30
